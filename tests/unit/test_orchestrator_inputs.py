"""One input, one outcome: the orchestrator decides each input into the open transaction whole,
or dead-letters it with its reason and leaves nothing of it there, and the loop goes on.

The orchestrator runs on a fake producer and in-memory stores: these are the runtime's rules, not
Kafka's behaviour (tests/integration/test_any_payload.py runs real workers on a real broker).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError

from sagastream.core.state import StateEncodingError, decode_state
from sagastream.core.topology import load_topology
from sagastream.ops.demo import order_fields
from sagastream.runtime import orchestrator as orchestrator_module
from sagastream.runtime.checkpoint import Checkpoint
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.orchestrator import Orchestrator
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import MemoryStore
from sagastream.wire.codec import AvroCodec, EncodeError, LocalSchemaIds, SchemaStore, new_meta
from sagastream.wire.dlq import read_dead_letter_headers
from tests.binary import write_project
from tests.unit.test_checkpoint import FakeConsumer, FakeProducer
from tests.unit.test_event_time import Record

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class HeaderProducer(FakeProducer):
    """The fake producer, keeping each record's dead-letter headers too."""

    sent: list[tuple[str, bytes | None, bytes | None, dict[str, str]]] = field(default_factory=list)

    def produce(self, topic: str, key: Any = None, value: Any = None, **kw: Any) -> None:
        super().produce(topic, key, value, **kw)
        self.sent.append((topic, key, value, read_dead_letter_headers(kw.get("headers"))))


@dataclass
class Loop:
    """An orchestrator with one partition, whose transaction goes to a fake producer."""

    orchestrator: Orchestrator
    producer: HeaderProducer
    codec: AvroCodec
    offset: int = 0

    @classmethod
    def of(cls, tmp_path: Path, topology_file: Path) -> Loop:
        schemas = SchemaStore(topology_file.parent / "schemas")
        topology = load_topology(topology_file, schemas.directory)
        codec = AvroCodec(schemas, LocalSchemaIds(schemas))
        settings = Settings(data_dir=tmp_path / "data", schema_registry_url=None)
        orchestrator = Orchestrator(settings, topology, schemas, codec, Metrics.create("t"))
        producer = HeaderProducer()
        orchestrator._ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
        orchestrator.stores = {0: MemoryStore()}
        return cls(orchestrator, producer, codec)

    @property
    def ckpt(self) -> Checkpoint:
        assert self.orchestrator._ckpt is not None
        return self.orchestrator._ckpt

    def send(self, topic: str, key: str, event_type: str, fields: dict[str, Any]) -> None:
        """Hand the orchestrator the next input of partition 0 of `topic`."""
        meta = new_meta(event_type, key, "test")
        value = self.codec.encode(event_type, {**fields, "meta": meta})
        record = Record(topic, 0, self.offset, 1000, key.encode(), value)
        self.orchestrator._handle(record)  # type: ignore[arg-type]
        self.offset += 1

    def produced(self, key: str) -> list[str]:
        """What the open transaction holds for a saga: event types, and `dlq:<reason>`s."""
        out = []
        for topic, k, value, letter in self.producer.sent:
            if k != key.encode() or topic == "changelog":
                continue
            out.append(f"dlq:{letter['reason']}" if letter else self.codec.decode(value or b"")[0])
        return out

    def holds_state(self, key: str) -> bool:
        return key.encode() in self.ckpt.pending_states(0)


def _order(key: str) -> dict[str, Any]:
    fields, _ = order_fields(key, random.Random(key))
    return {**fields, "card_token": "tok_visa"}


@pytest.fixture
def orders(tmp_path: Path) -> Loop:
    return Loop.of(tmp_path, ROOT / "topology.yaml")


def test_a_state_that_cannot_be_encoded_dead_letters_its_input_alone(
    orders: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = orchestrator_module.encode_state

    def refuse_one(state: dict[str, Any]) -> bytes:
        if state.key == "o-bad":
            raise StateEncodingError("cannot keep start.blob in the saga state: a set")
        return real(state)

    monkeypatch.setattr(orchestrator_module, "encode_state", refuse_one)
    orders.send("orders.events", "o-bad", "OrderPlaced", _order("o-bad"))
    orders.send("orders.events", "o-good", "OrderPlaced", _order("o-good"))

    assert orders.produced("o-bad") == ["dlq:state_encoding"]  # no command of it went out
    assert not orders.holds_state("o-bad") and b"o-bad" not in orders.ckpt.trail
    assert sorted(orders.produced("o-good")) == [
        "ChargePayment",
        "CreateShipment",
        "ReserveInventory",
    ]
    assert orders.holds_state("o-good")
    assert orders.ckpt.offsets == {("orders.events", 0): 2}  # both inputs are done with


def test_an_output_that_cannot_be_encoded_leaves_nothing_of_its_input(
    orders: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = orders.orchestrator.encoder
    real = encoder.derived

    def refuse_reservation(event_type: str, key: bytes, *args: Any, **kw: Any) -> Any:
        if key == b"o-bad" and event_type == "ReserveInventory":
            raise EncodeError(event_type, "items", "not an array")
        return real(event_type, key, *args, **kw)

    monkeypatch.setattr(encoder, "derived", refuse_reservation)
    orders.send("orders.events", "o-bad", "OrderPlaced", _order("o-bad"))
    orders.send("orders.events", "o-good", "OrderPlaced", _order("o-good"))

    # ChargePayment was encoded before the reservation failed: it is not sent either
    assert orders.produced("o-bad") == ["dlq:output_encoding"]
    assert not orders.holds_state("o-bad")
    assert len(orders.produced("o-good")) == 3 and orders.holds_state("o-good")


def test_a_failing_decision_dead_letters_its_input_and_the_next_one_is_decided(
    orders: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = orchestrator_module.decide

    def broken(definition: Any, state: Any, event: Any, now: int) -> Any:
        if event.fields.get("order_id") == "o-bad":
            raise KeyError("a bug")
        return real(definition, state, event, now)

    monkeypatch.setattr(orchestrator_module, "decide", broken)
    orders.send("orders.events", "o-bad", "OrderPlaced", _order("o-bad"))
    orders.send("orders.events", "o-good", "OrderPlaced", _order("o-good"))

    assert orders.produced("o-bad") == ["dlq:processing_error"]
    assert not orders.holds_state("o-bad") and len(orders.produced("o-good")) == 3


def test_an_input_whose_reading_fails_is_dead_lettered_and_the_next_one_is_decided(
    orders: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = orchestrator_module.read_input

    def broken(msg: Any, *args: Any) -> Any:
        if msg.key() == b"o-bad":
            raise AttributeError("a bug in decoding")
        return real(msg, *args)

    monkeypatch.setattr(orchestrator_module, "read_input", broken)
    orders.send("orders.events", "o-bad", "OrderPlaced", _order("o-bad"))
    orders.send("orders.events", "o-good", "OrderPlaced", _order("o-good"))

    assert orders.produced("o-bad") == ["dlq:processing_error"]
    assert len(orders.produced("o-good")) == 3
    assert orders.ckpt.offsets == {("orders.events", 0): 2}


def test_a_result_for_an_attempt_never_sent_is_dead_lettered_and_changes_nothing(
    orders: Loop,
) -> None:
    orders.send("orders.events", "o-1", "OrderPlaced", _order("o-1"))
    before = orders.ckpt.state(0, orders.orchestrator.stores[0], b"o-1")
    charged = {"order_id": "o-1", "payment_id": "pay-9", "amount_cents": 1}
    meta = {**new_meta("PaymentCharged", "o-1", "test"), "attempt": 9}
    value = orders.codec.encode("PaymentCharged", {**charged, "meta": meta})
    orders.orchestrator._handle(Record("payments.events", 0, 0, 1000, b"o-1", value))  # type: ignore[arg-type]

    assert orders.produced("o-1")[-1] == "dlq:saga"
    letter = orders.producer.sent[-1][3]
    assert "attempt 9 of step payment was never sent" in letter["error"]
    assert orders.ckpt.state(0, orders.orchestrator.stores[0], b"o-1") == before


def test_a_saga_of_binary_payloads_commits_and_its_state_keeps_them(tmp_path: Path) -> None:
    """The defect: a `bytes` field made the state's JSON raise at commit, every time."""
    vault = Loop.of(tmp_path, write_project(tmp_path / "vault"))
    blob, digest = bytes(range(256)), b"\x00\x01\x02\x03\xfc\xfd\xfe\xff"
    filed = {"doc_id": "d-1", "blob": blob, "digest": digest, "fee": Decimal("12.30")}
    vault.send("vault.events", "d-1", "DocumentFiled", {**filed, "note": "not kept"})
    vault.ckpt.commit(FakeConsumer())  # type: ignore[arg-type]

    (record,) = [v for t, k, v, _ in vault.producer.committed if t == "changelog"]
    assert record is not None
    state = decode_state(record)
    assert state.data["start"] == {
        "doc_id": "d-1",
        "blob": blob,
        "digest": digest,
        "fee": b"\x04\xce",  # decoded as Avro bytes: the unscaled 1230, big-endian
    }
    assert vault.produced("d-1") == ["SealDocument"]


class RewindingConsumer(FakeConsumer):
    """The fake consumer, with nothing assigned to rewind after an abort."""

    def assignment(self) -> list[Any]:
        return []


def test_an_aborted_transactions_counts_are_dropped_and_its_inputs_counted_once_redone(
    orders: Loop,
) -> None:
    """The inputs of an aborted transaction are read and decided again: counted then, once."""
    registry = orders.orchestrator.metrics.registry
    consumed = {"role": "orchestrator", "event_type": "OrderPlaced"}
    produced = {"role": "orchestrator", "event_type": "ChargePayment"}
    orders.orchestrator._consumer = RewindingConsumer()  # type: ignore[assignment]
    for attempt in ("aborted", "redone"):
        orders.producer.fail_commit = (
            KafkaError(KafkaError._TIMED_OUT) if attempt == "aborted" else None  # must abort
        )
        orders.offset = 0  # the rewind: the same two inputs again
        for key in ("o-1", "o-2"):
            orders.send("orders.events", key, "OrderPlaced", _order(key))
        orders.orchestrator._commit()
    assert orders.producer.log.count("abort") == 1
    assert registry.get_sample_value("sagastream_events_consumed_total", consumed) == 2
    assert registry.get_sample_value("sagastream_events_produced_total", produced) == 2
    aborted = registry.get_sample_value("sagastream_transactions_total", {"result": "aborted"})
    assert aborted == 1


def test_the_metrics_of_a_transaction_are_counted_once_it_ends(orders: Loop) -> None:
    """Counters and the running and waiting gauges are updated once per transaction, when it
    commits, for all its decisions together."""
    registry = orders.orchestrator.metrics.registry

    def value(name: str, **labels: str) -> Any:
        return registry.get_sample_value(name, labels)

    for key in ("o-1", "o-2"):
        orders.send("orders.events", key, "OrderPlaced", _order(key))
    consumed = ("sagastream_events_consumed_total", {"role": "orchestrator"})
    running = ("sagastream_sagas_running", {"saga": "order", "status": "running"})
    waiting = ("sagastream_sagas_waiting", {"saga": "order", "step": "payment"})
    assert value(consumed[0], **consumed[1], event_type="OrderPlaced") is None
    assert value(running[0], **running[1]) is None and value(waiting[0], **waiting[1]) is None
    orders.orchestrator._consumer = FakeConsumer()  # type: ignore[assignment]
    orders.orchestrator._commit()
    assert value(consumed[0], **consumed[1], event_type="OrderPlaced") == 2
    produced = "sagastream_events_produced_total"
    assert value(produced, role="orchestrator", event_type="ChargePayment") == 2
    assert value(running[0], **running[1]) == 2 and value(waiting[0], **waiting[1]) == 2
