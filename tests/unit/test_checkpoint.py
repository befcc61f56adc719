"""The Checkpoint commits outputs, changelog and offsets together, and stores states only after.

The producer is a fake (these are the commit rules, not Kafka's behaviour; the integration and
crash tests run the real thing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from sagastream.core.state import SagaState, decode_state, encode_state
from sagastream.runtime.checkpoint import Checkpoint, ProducerFatal, TransactionFailed
from sagastream.runtime.health import RoleHealth
from sagastream.runtime.inputs import OutRecord
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.orchestrator import commit_counted
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import MemoryStore
from tests.unit.states import a_state


@dataclass
class FakeMessage:
    topic_: str
    partition_: int
    offset_: int

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_


@dataclass
class FakeProducer:
    """Records what a transaction carried; `fail_commit` makes commit_transaction raise."""

    fail_commit: KafkaError | None = None
    # errors the next commit_transaction calls raise, one each, before it succeeds
    commit_errors: list[KafkaError] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    pending: list[tuple[str, Any, Any, int | None]] = field(default_factory=list)
    committed: list[tuple[str, Any, Any, int | None]] = field(default_factory=list)
    offsets: list[Any] = field(default_factory=list)
    _next_offset: int = 100

    def begin_transaction(self) -> None:
        self.log.append("begin")

    def produce(self, topic: str, key: Any = None, value: Any = None, **kw: Any) -> None:
        self.pending.append((topic, key, value, kw.get("partition")))
        if kw.get("on_delivery"):
            self._next_offset += 1
            kw["on_delivery"](None, FakeMessage(topic, kw.get("partition", 0), self._next_offset))

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.offsets.append([(o.topic, o.partition, o.offset) for o in offsets])

    def commit_transaction(self, timeout: float) -> None:
        self.log.append("commit_transaction")
        if self.commit_errors:
            raise KafkaException(self.commit_errors.pop(0))
        if self.fail_commit is not None:
            raise KafkaException(self.fail_commit)
        self.committed += self.pending
        self.pending = []
        self.log.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.pending = []
        self.log.append("abort")

    def poll(self, timeout: float) -> int:
        return 0


class FakeConsumer:
    def __init__(self, positions: dict[tuple[str, int], int] | None = None) -> None:
        self.positions = positions or {}

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def position(self, partitions: list[Any]) -> list[Any]:
        for tp in partitions:
            tp.offset = self.positions.get((tp.topic, tp.partition), -1001)
        return partitions


def _put(ckpt: Checkpoint, store: MemoryStore, old: Any, new: SagaState | None) -> None:
    ckpt.put_state(0, store, b"order-1", old, new, None if new is None else encode_state(new))


def _work(ckpt: Checkpoint, store: MemoryStore) -> None:
    ckpt.begin()
    old = ckpt.state(0, store, b"order-1")
    _put(ckpt, store, old, a_state(timers={"deadline||0": 9}))
    _put(ckpt, store, old, a_state(status="completed"))
    ckpt.produce(OutRecord("payments.commands", b"order-1", b"charge", []))
    ckpt.consumed(FakeMessage("orders.events", 0, 41))  # type: ignore[arg-type]


def test_commit_carries_outputs_one_changelog_record_per_saga_and_offsets() -> None:
    producer, store = FakeProducer(), MemoryStore()
    ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    _work(ckpt, store)
    ckpt.commit(FakeConsumer())  # type: ignore[arg-type]

    topics = [topic for topic, *_ in producer.committed]
    assert topics == ["payments.commands", "changelog"]  # two decisions, one changelog record
    # the bytes the last decision was encoded to, as they were handed over
    assert decode_state(producer.committed[-1][2]) == a_state(status="completed")
    assert producer.offsets == [[("orders.events", 0, 42)]]
    assert store.checkpoint() == 101
    assert ckpt.state(0, store, b"order-1") == a_state(status="completed")
    assert store.due(10**6, 10) == []
    assert not ckpt.open


def test_an_aborted_transaction_leaves_the_store_at_the_last_commit() -> None:
    producer, store = FakeProducer(), MemoryStore()
    ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    _work(ckpt, store)
    producer.fail_commit = KafkaError(KafkaError._TIMED_OUT)  # not retriable: abort
    with pytest.raises(TransactionFailed):
        ckpt.commit(FakeConsumer())  # type: ignore[arg-type]

    assert producer.log[-1] == "abort" and producer.committed == []
    assert store.get(b"order-1") is None and store.checkpoint() is None
    assert ckpt.state(0, store, b"order-1") is None
    assert not ckpt.open and ckpt.offsets == {}


def test_states_reach_the_store_only_after_the_commit() -> None:
    producer, store = FakeProducer(), MemoryStore()
    ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    _work(ckpt, store)
    assert store.get(b"order-1") is None  # decided, not committed
    assert ckpt.state(0, store, b"order-1") == a_state(status="completed")
    ckpt.commit(FakeConsumer())  # type: ignore[arg-type]
    assert store.get(b"order-1") is not None


def test_a_removed_saga_commits_as_a_tombstone_and_leaves_the_store() -> None:
    producer, store = FakeProducer(), MemoryStore()
    ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    ckpt.hold({("orders.events", 0): 7})
    ended = a_state(status="completed", ended=400, expires=500)
    ckpt.begin()
    _put(ckpt, store, None, ended)
    ckpt.commit(FakeConsumer())  # type: ignore[arg-type]
    assert store.due(10**6, 10) == [(500, "expire", b"order-1")]

    ckpt.begin()
    _put(ckpt, store, ckpt.state(0, store, b"order-1"), None)
    assert ckpt.state(0, store, b"order-1") is None  # gone for the rest of the transaction
    assert store.get(b"order-1") is not None  # until it commits
    ckpt.commit(FakeConsumer())  # type: ignore[arg-type]

    assert producer.committed[-1] == ("changelog", b"order-1", None, 0)
    assert store.get(b"order-1") is None and store.due(10**6, 10) == []
    assert ckpt.state(0, store, b"order-1") is None


def _put_running(ckpt: Checkpoint, store: MemoryStore, partition: int, key: bytes) -> None:
    """A saga changed with no input consumed, as a fired timer changes it."""
    state = a_state()
    ckpt.put_state(partition, store, key, None, state, encode_state(state))


def _timed_out() -> KafkaError:
    return KafkaError(KafkaError._TIMED_OUT, "commit timed out", retriable=True)


def _transactions(metrics: Metrics, result: str) -> float:
    value = metrics.registry.get_sample_value("sagastream_transactions_total", {"result": result})
    return value or 0.0


def test_a_timer_only_transaction_sends_the_owned_positions_so_it_is_fenced() -> None:
    producer, store = FakeProducer(), MemoryStore()
    ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    ckpt.hold({("orders.events", 0): 7, ("payments.events", 0): 3, ("shipping.events", 0): -1001})
    ckpt.begin()  # a fired timer: a state changes, no input is consumed
    _put_running(ckpt, store, 0, b"order-1")
    ckpt.commit(FakeConsumer())  # type: ignore[arg-type]
    assert producer.offsets == [[("orders.events", 0, 7), ("payments.events", 0, 3)]]

    _work(ckpt, store)  # then an input of orders.events: its new position, the others kept
    ckpt.commit(FakeConsumer())  # type: ignore[arg-type]
    assert producer.offsets[-1] == [("orders.events", 0, 42), ("payments.events", 0, 3)]
    ckpt.release({0})
    ckpt.begin()
    _put_running(ckpt, store, 0, b"order-2")
    with pytest.raises(TransactionFailed, match="group generation"):
        ckpt.commit(FakeConsumer())  # type: ignore[arg-type]
    assert producer.log[-1] == "abort"


def test_owned_inputs_with_no_committed_offset_send_where_the_consumer_stands() -> None:
    producer, store = FakeProducer(), MemoryStore()
    ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    ckpt.hold({("orders.events", 1): -1001, ("payments.events", 1): -1001})
    ckpt.begin()
    _put_running(ckpt, store, 1, b"order-1")
    consumer = FakeConsumer({("orders.events", 1): 12})
    ckpt.commit(consumer)  # type: ignore[arg-type]
    assert producer.offsets == [[("orders.events", 1, 12)]]


def test_a_commit_that_times_out_is_resumed_and_counted_as_committed() -> None:
    producer, store = FakeProducer(commit_errors=[_timed_out(), _timed_out()]), MemoryStore()
    ckpt, metrics = Checkpoint(producer, "changelog"), Metrics.create("orchestrator")  # type: ignore[arg-type]
    _work(ckpt, store)
    assert commit_counted(ckpt, FakeConsumer(), metrics, RoleHealth(Settings()), 30.0)  # type: ignore[arg-type]

    assert producer.log.count("commit_transaction") == 3 and "abort" not in producer.log
    assert store.get(b"order-1") is not None
    assert (_transactions(metrics, "committed"), _transactions(metrics, "aborted")) == (1, 0)


def test_a_commit_still_unresolved_at_the_deadline_rebuilds_the_session_without_an_abort() -> None:
    producer, store = FakeProducer(fail_commit=_timed_out()), MemoryStore()
    ckpt, metrics = Checkpoint(producer, "changelog"), Metrics.create("orchestrator")  # type: ignore[arg-type]
    _work(ckpt, store)
    with pytest.raises(ProducerFatal, match="did not finish in time"):
        commit_counted(ckpt, FakeConsumer(), metrics, RoleHealth(Settings()), 0.0)  # type: ignore[arg-type]

    assert "abort" not in producer.log  # librdkafka refuses it while the commit goes on
    assert store.get(b"order-1") is None and not ckpt.open
    assert _transactions(metrics, "failed") == 1 and _transactions(metrics, "aborted") == 0


def _audit(status: str, changes: list[str]) -> Any:
    entry = ("order", status, [{"what": w, "step": None} for w in changes], {})
    return entry, OutRecord("sagas.lifecycle", b"order-1", status.encode(), [])


def test_an_abort_discards_the_trail_and_the_metric_updates_with_the_states() -> None:
    producer, store = FakeProducer(), MemoryStore()
    ckpt = Checkpoint(producer, "changelog")  # type: ignore[arg-type]
    counted: list[str] = []
    _work(ckpt, store)
    ckpt.keep_trail(b"order-1", _audit("completed", ["completed"]))
    ckpt.after_commit(lambda: counted.append("order completed"))
    ckpt.abort()  # fenced or failed: the trail and the count go with the states
    assert (ckpt.trail, ckpt.work, ckpt.offsets, counted) == ({}, {}, {}, [])

    _work(ckpt, store)
    ckpt.keep_trail(b"order-1", _audit("completed", ["started", "completed"]))
    ckpt.after_commit(lambda: counted.append("order completed"))
    ckpt.commit(FakeConsumer())  # type: ignore[arg-type]
    assert counted == ["order completed"] and ckpt.trail == {}
