"""Event time for replays: inputs merged by timestamp, timers fired when event time passes them
(before the record that passes them, at their own due time), backoffs that do not depend on
the speed of the replay. The orchestrator runs on a fake producer and in-memory stores."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sagastream.core.saga import Event, decide
from sagastream.core.state import seen_digest
from sagastream.core.topology import Topology, parse_topology
from sagastream.ops.demo import order_fields
from sagastream.runtime.checkpoint import Checkpoint
from sagastream.runtime.event_time import EventClock, EventTimeOrchestrator, LiveOrder, Merge
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import MemoryStore
from sagastream.wire.codec import AvroCodec, LocalSchemaIds, SchemaStore, new_meta
from tests.unit.test_checkpoint import FakeMessage, FakeProducer

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Record(FakeMessage):
    """A consumed message, as confluent-kafka gives it."""

    at: int
    key_: bytes = b"o-1"
    value_: bytes = b""

    def timestamp(self) -> tuple[int, int]:
        return 1, self.at  # TIMESTAMP_CREATE_TIME

    def key(self) -> bytes:
        return self.key_

    def value(self) -> bytes:
        return self.value_

    def error(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return []


def test_merge_releases_in_timestamp_order_once_no_partition_can_hold_an_earlier_one() -> None:
    ranges = {("orders", 0): (0, 1), ("payments", 0): (5, 7), ("payments", 1): (0, 0)}
    merge = Merge(ranges, {"orders": 0, "payments": 1})
    assert merge.add(Record("payments", 0, 5, at=200))  # type: ignore[arg-type]
    assert list(merge.ready()) == []  # orders may still hold an earlier record
    assert merge.add(Record("orders", 0, 0, at=100))  # type: ignore[arg-type]
    # a partition's next record is no earlier than the one it buffered: both go
    assert [(r.topic(), r.at) for r in merge.ready()] == [("orders", 100), ("payments", 200)]
    assert not merge.done
    assert not merge.add(Record("payments", 0, 7, at=150))  # type: ignore[arg-type] # past its range
    assert merge.done and merge.exhausted(("payments", 0))


def test_merge_breaks_ties_by_topic_rank_and_waits_for_partitions_not_yet_read() -> None:
    ranges = {("results", 0): (0, 1), ("starts", 0): (0, 1), ("starts", 1): (0, 1)}
    merge = Merge(ranges, {"starts": 0, "results": 1})
    merge.add(Record("results", 0, 0, at=100))  # type: ignore[arg-type]
    merge.add(Record("starts", 0, 0, at=100))  # type: ignore[arg-type]
    assert list(merge.ready()) == []  # starts[1] is not read yet
    merge.reached(("starts", 1), 1)  # its end: nothing there
    assert [r.topic() for r in merge.ready()] == ["starts", "results"]
    assert merge.done


def test_event_clock_fires_the_earliest_due_time_first_and_only_up_to_the_limit() -> None:
    clock = EventClock()
    clock.arm(300, 0, b"b")
    clock.arm(200, 1, b"a")
    clock.arm(200, 0, b"c")
    clock.arm(200, 0, b"c")  # armed once
    assert clock.fire_next(150) == []
    assert sorted(clock.fire_next(1_000)) == [(0, b"c"), (1, b"a")] and clock.now == 200
    assert clock.fire_next(250) == [] and clock.now == 200
    clock.reach(250)
    assert clock.fire_next(1_000) == [(0, b"b")] and clock.now == 300
    clock.reach(100)
    assert clock.now == 300  # event time never goes back


def _topology(retry_failures: bool = True) -> Topology:
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    if retry_failures:
        data["sagas"]["order"]["steps"]["payment"]["retry"]["on"] = ["timeout", "failure"]
    return parse_topology(data, "topology.yaml", ROOT / "schemas")


STORE = SchemaStore(ROOT / "schemas")
CODEC = AvroCodec(STORE, LocalSchemaIds(STORE))
ORDER = {**order_fields("o-1", random.Random(1))[0], "card_token": "tok_visa", "order_id": "o-1"}


def _input(
    topic: str,
    offset: int,
    at: int,
    event_type: str,
    attempt: int = 1,
    step: str | None = None,
    **fields: Any,
) -> Record:
    """An input record of saga o-1 whose event id is its type and attempt (a result names the
    step whose command it answers if `step` is given)."""
    meta = {
        **new_meta(event_type, "o-1", "test", attempt=attempt),
        "event_id": f"{event_type}#{attempt}",
        "step": step,
    }
    value = CODEC.encode(event_type, {"order_id": "o-1", **fields, "meta": meta})
    return Record(topic, 0, offset, at, value_=value)


def _replay(
    tmp_path: Path,
    topology: Topology,
    records: list[Record],
    seen: dict[bytes, list[str]],
    renames: dict[str, dict[str, str]] | None = None,
) -> tuple[EventTimeOrchestrator, list[tuple[str, int, int]]]:
    """Replay the records, handed over in the order given, on partition 0 of their topics:
    the orchestrator and what it decided, as (event type, attempt, time)."""
    ranges = {(t, 0): (0, 0) for t in topology.orchestrator_inputs()}
    for record in records:
        start, end = ranges[(record.topic_, 0)]
        ranges[(record.topic_, 0)] = (start, max(end, record.offset_ + 1))
    settings = Settings(data_dir=tmp_path, schema_registry_url=None)
    orchestrator = EventTimeOrchestrator(
        settings, topology, STORE, CODEC, Metrics.create("t"), ranges, 5_000, seen, renames
    )
    producer = FakeProducer()
    orchestrator._ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    orchestrator.stores = {0: MemoryStore()}
    for record in records:
        orchestrator._handle(record)  # type: ignore[arg-type]
    orchestrator._fire_due()  # the wall-clock tick, with every input read: the end
    sent = [CODEC.decode(value) for _, _, value, _ in producer.pending]
    return orchestrator, [(t, r["meta"]["attempt"], r["meta"]["occurred_at"]) for t, r in sent]


def test_a_timer_due_in_event_time_fires_before_the_record_that_passes_it(tmp_path: Path) -> None:
    """Payment attempt 1 fails at t=1100; its retry is due before attempt 2's answer at 1600. In
    event time the retry fires first (at its due time), so attempt 2's success is not stale,
    however fast the records are replayed and in whatever order their topics are read."""
    records = [
        _input("payments.events", 0, 1100, "PaymentFailed", reason="busy"),
        _input("payments.events", 1, 1600, "PaymentCharged", 2, payment_id="p", amount_cents=1),
        _input("shipping.events", 0, 1060, "ShipmentCreated", shipment_id="s"),
        _input("inventory.events", 0, 1050, "InventoryReserved", reservation_id="r"),
        _input("orders.events", 0, 1000, "OrderPlaced", **ORDER),
    ]
    orchestrator, decided = _replay(tmp_path, _topology(), records, {})

    assert orchestrator.replayed == 5
    retry_at = next(at for t, attempt, at in decided if t == "ChargePayment" and attempt == 2)
    assert 1100 <= retry_at <= 1300  # at its due time: 1100 plus a backoff of at most 200 ms
    assert [(t, a) for t, a, _ in decided] == [
        ("ChargePayment", 1),
        ("ReserveInventory", 1),
        ("CreateShipment", 1),
        ("ChargePayment", 2),
        ("SagaCompleted", 1),
        *[("SendNotification", 1)] * (len(decided) - 5),
    ]
    assert decided[4][2] == 1600  # decided at its record's timestamp
    assert orchestrator.finished and orchestrator._stop.is_set()


def test_a_sagas_events_are_decided_in_the_order_the_live_run_saw_them(tmp_path: Path) -> None:
    """The live run took the shipment before the reservation, though the reservation is older:
    so it undoes the reservation first (reverse completion order), and so does the replay."""
    records = [
        _input("orders.events", 0, 1000, "OrderPlaced", **ORDER),
        _input("inventory.events", 0, 1050, "InventoryReserved", reservation_id="r"),
        _input("shipping.events", 0, 1060, "ShipmentCreated", shipment_id="s"),
        _input("payments.events", 0, 1100, "PaymentFailed", reason="declined"),
    ]
    ids = ["OrderPlaced#1", "ShipmentCreated#1", "InventoryReserved#1", "PaymentFailed#1"]
    seen = [seen_digest(i) for i in ids]  # as the live state keeps them
    undo = {"ReleaseInventory", "CancelShipment"}

    _, by_time = _replay(tmp_path / "a", _topology(retry_failures=False), records, {})
    _, as_live = _replay(tmp_path / "b", _topology(retry_failures=False), records, {b"o-1": seen})

    assert [t for t, _, _ in by_time if t in undo] == ["CancelShipment"]
    assert [t for t, _, _ in as_live if t in undo] == ["ReleaseInventory"]


def _renamed_and_rewired() -> Topology:
    """The README's version 2 of the order saga: shipping renamed ship, after the payment and
    the stock."""
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    steps = data["sagas"]["order"]["steps"]
    ship = steps.pop("shipping")
    ship["depends_on"] = ["payment", "inventory"]
    ship["compensation"]["inputs"] = {"start": ["order_id"], "ship": ["shipment_id"]}
    steps["ship"] = ship
    return parse_topology(data, "topology-v2.yaml", ROOT / "schemas")


def test_live_results_answer_a_renamed_step_once_it_has_sent_its_command(tmp_path: Path) -> None:
    """The live shipping step answered at 1020, before the payment; version 2 sends ship's
    command only after the payment (1100): the live answer, named `shipping`, answers `ship`
    then, as the handler would have answered the later command."""
    records = [
        _input("orders.events", 0, 1000, "OrderPlaced", **ORDER),
        _input("shipping.events", 0, 1020, "ShipmentCreated", step="shipping", shipment_id="s"),
        _input(
            "inventory.events", 0, 1050, "InventoryReserved", step="inventory", reservation_id="r"
        ),
        _input(
            "payments.events",
            0,
            1100,
            "PaymentCharged",
            step="payment",
            payment_id="p",
            amount_cents=1,
        ),
    ]
    v2 = _renamed_and_rewired()
    orchestrator, decided = _replay(
        tmp_path / "a", v2, records, {}, {"order": {"shipping": "ship"}}
    )
    assert [(t, at) for t, _, at in decided][:4] == [
        ("ChargePayment", 1000),
        ("ReserveInventory", 1000),
        ("CreateShipment", 1100),
        ("SagaCompleted", 1100),
    ]
    assert orchestrator.replayed == 4 and orchestrator.unanswered == 0

    # not renamed, the answer names a step version 2 does not have: the saga waits for ship
    orchestrator, decided = _replay(tmp_path / "b", v2, records, {})
    assert "SagaCompleted" not in {t for t, _, _ in decided}
    # a result whose attempt the replay never sends answers nothing, and is counted
    failed_twice = [
        *records[:3],
        _input("payments.events", 0, 1100, "PaymentFailed", 2, "payment", reason="busy"),
    ]
    orchestrator, decided = _replay(tmp_path / "c", _topology(), failed_twice, {})
    assert orchestrator.unanswered == 1 and orchestrator.replayed == 4
    # so does one read after its saga ended: v2 never ships an order whose payment failed
    declined = [
        records[0],
        records[2],
        _input("payments.events", 0, 1100, "PaymentFailed", step="payment", reason="declined"),
        _input("inventory.events", 1, 1200, "InventoryReleased", step="inventory"),
        _input("shipping.events", 0, 1300, "ShipmentCreated", step="shipping", shipment_id="s"),
    ]
    renames = {"order": {"shipping": "ship"}}
    orchestrator, decided = _replay(tmp_path / "d", v2, declined, {}, renames)
    assert ("SagaCompensated", 1, 1200) in decided and "CreateShipment" not in {
        t for t, _, _ in decided
    }
    assert orchestrator.unanswered == 1 and orchestrator.replayed == 5


def test_live_order_holds_an_event_back_until_those_decided_before_it_came() -> None:
    order = LiveOrder({b"k": [seen_digest(i) for i in ("a", "b", "c")]})
    a, b, c, other = "msg-a", "msg-b", "msg-c", "msg-other"
    assert order.admit(c, "c") == []  # type: ignore[arg-type]
    assert order.admit(other, "x") == [other]  # type: ignore[arg-type] # not in any live order
    assert order.admit(a, "a") == [a]  # type: ignore[arg-type]
    assert order.admit(b, "b") == [b, c]  # type: ignore[arg-type]
    assert order.admit(a, "a") == [a]  # type: ignore[arg-type] # a duplicate is not held
    assert order.rest() == []
    assert order.admit(c, "c") == [c]  # type: ignore[arg-type]
    held = LiveOrder({b"k": [seen_digest("a"), seen_digest("b")]})
    assert held.admit(b, "b") == []  # type: ignore[arg-type]
    assert held.rest() == [b]  # a never came (outside the replay): b goes at the end


def test_backoffs_do_not_depend_on_the_clock() -> None:
    """The same history decided at other times arms the same retry delays, so a replay that
    decides each record at its timestamp (not when the live run did) retries like it did."""
    order = ("order", _topology().sagas["order"])
    placed = Event("OrderPlaced", "e1", {"order_id": "k"})
    failed = Event("PaymentFailed", "e2", {"order_id": "k", "reason": "gateway"})
    delays = set()
    for shift in (0, 7, 12_345):
        state = decide(order, None, placed, 1000 + shift).state
        after = decide(order, state, failed, 1100 + shift).state
        assert after is not None
        delays.add(after.timers["retry|payment|1"] - (1100 + shift))
    assert len(delays) == 1
