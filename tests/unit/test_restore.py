"""Replaying a changelog into partition stores: states, timers from headers, checkpoints.

The consumer is a fake that hands out prepared records and then the end of each partition;
restoring from a real changelog is covered by the integration tests (rebuild, crash suite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError

from sagastream.core.state import SagaState, decode_state, encode_state
from sagastream.runtime.restore import _replay, _valid_checkpoint
from sagastream.runtime.store import MemoryStore, changelog_headers
from tests.unit.states import a_state


@dataclass
class Record:
    partition_: int
    offset_: int
    key_: bytes | None
    value_: bytes | None
    headers_: list[tuple[str, bytes]] | None = None
    eof: bool = False

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes | None:
        return self.key_

    def value(self) -> bytes | None:
        return self.value_

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.headers_

    def error(self) -> Any:
        return KafkaError(KafkaError._PARTITION_EOF) if self.eof else None


class FakeConsumer:
    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def poll(self, timeout: float) -> Record | None:
        return self.records.pop(0) if self.records else None

    def consume(self, n: int, timeout: float) -> list[Record]:
        taken, self.records = self.records[:n], self.records[n:]
        return taken


def state(timers: dict[str, int], status: str = "running", **fields: Any) -> SagaState:
    return a_state(status=status, timers=timers, **fields)


def record(partition: int, offset: int, key: bytes, value: SagaState | None) -> Record:
    raw = None if value is None else encode_state(value)
    return Record(partition, offset, key, raw, changelog_headers(value))


def test_replay_rebuilds_states_timers_and_checkpoints_of_each_partition() -> None:
    stores = {0: MemoryStore(), 1: MemoryStore()}
    consumer = FakeConsumer(
        [
            record(0, 0, b"a", state({"step_timeout|pay|1": 100})),
            record(1, 0, b"b", state({"deadline||0": 900})),
            record(0, 1, b"a", state({"retry|pay|1": 300})),  # re-armed: the old one goes
            record(0, 2, b"c", state({"deadline||0": 50})),
            record(0, 3, b"c", None),  # deleted
            Record(0, 4, None, None, eof=True),
            Record(1, 1, None, None, eof=True),
        ]
    )
    counts = {0: 0, 1: 0}
    _replay(consumer, stores, {0: 4, 1: 1}, {0, 1}, counts, math.inf)  # type: ignore[arg-type]

    assert counts == {0: 4, 1: 1}
    assert stores[0].checkpoint() == 3 and stores[1].checkpoint() == 0
    assert [k for k, _ in stores[0].states()] == [b"a"]
    assert stores[0].due(10**6, 10) == [(300, "retry|pay|1", b"a")]
    assert stores[1].due(10**6, 10) == [(900, "deadline||0", b"b")]


def test_replay_onto_a_checkpoint_replaces_timers_the_store_already_had() -> None:
    store = MemoryStore()
    store.apply({b"a": encode_state(state({"step_timeout|pay|1": 100}))}, 7)
    consumer = FakeConsumer(
        [
            record(0, 8, b"a", state({}, status="completed")),
            Record(0, 9, None, None, eof=True),
        ]
    )
    _replay(consumer, {0: store}, {0: 9}, set(), {0: 0}, math.inf)  # type: ignore[arg-type]
    assert store.checkpoint() == 8
    assert store.due(10**6, 10) == []
    assert decode_state(store.get(b"a") or b"").status == "completed"


def test_a_record_without_the_timers_header_is_read_from_its_state() -> None:
    store = MemoryStore()
    raw = encode_state(state({"deadline||0": 42}))
    consumer = FakeConsumer([Record(0, 0, b"a", raw), Record(0, 1, None, None, eof=True)])
    _replay(consumer, {0: store}, {0: 1}, {0}, {0: 0}, math.inf)  # type: ignore[arg-type]
    assert store.due(10**6, 10) == [(42, "deadline||0", b"a")]


def test_a_tombstone_deletes_a_restored_state_and_its_expiry() -> None:
    store = MemoryStore()
    ended = state({}, status="completed", ended=400, expires=500)
    store.apply({b"a": encode_state(ended)}, 7)
    assert store.due(10**6, 10) == [(500, "expire", b"a")]
    consumer = FakeConsumer([record(0, 8, b"a", None), Record(0, 9, None, None, eof=True)])
    _replay(consumer, {0: store}, {0: 9}, set(), {0: 0}, math.inf)  # type: ignore[arg-type]
    assert store.get(b"a") is None and store.due(10**6, 10) == []
    assert store.checkpoint() == 8


def test_an_expiry_travels_in_the_timers_header() -> None:
    store = MemoryStore()
    ended = state({}, status="compensated", ended=400, expires=500)
    consumer = FakeConsumer([record(0, 0, b"a", ended), Record(0, 1, None, None, eof=True)])
    _replay(consumer, {0: store}, {0: 1}, {0}, {0: 0}, math.inf)  # type: ignore[arg-type]
    assert store.due(10**6, 10) == [(500, "expire", b"a")]


def test_an_end_at_the_lso_is_not_the_end_while_an_open_transaction_holds_it_back() -> None:
    # another producer's transaction is open at offset 1; a record committed after it (3) is
    # beyond the LSO, so the consumer says "end" at 1 first and at 5 once that one is over
    store = MemoryStore()
    consumer = FakeConsumer(
        [
            record(0, 0, b"a", state({})),
            Record(0, 1, None, None, eof=True),
            record(0, 3, b"b", state({})),
            Record(0, 5, None, None, eof=True),
        ]
    )
    counts = {0: 0}
    _replay(consumer, {0: store}, {0: 4}, {0}, counts, math.inf)  # type: ignore[arg-type]
    assert counts == {0: 2}
    assert [k for k, _ in store.states()] == [b"a", b"b"]
    assert store.checkpoint() == 3


def _checkpointed(offset: int, topic_id: str | None) -> MemoryStore:
    store = MemoryStore()
    store.apply({b"a": encode_state(state({}))}, offset)
    if topic_id is not None:
        store.set_changelog_id(topic_id)
    return store


def test_a_checkpoint_in_the_same_topic_and_below_the_high_watermark_is_kept() -> None:
    store = _checkpointed(6, "topic-A")
    assert _valid_checkpoint("changelog", 0, store, (0, 9), "topic-A") == 6
    assert store.get(b"a") is not None


def test_a_checkpoint_of_a_recreated_topic_wipes_the_store_even_inside_the_range() -> None:
    store = _checkpointed(6, "topic-A")
    assert _valid_checkpoint("changelog", 0, store, (0, 9), "topic-B") is None
    assert store.get(b"a") is None and store.changelog_id() == "topic-B"


def test_a_checkpoint_past_the_end_or_before_the_log_start_wipes_the_store() -> None:
    for ends in ((0, 5), (8, 20)):
        store = _checkpointed(6, "topic-A")
        assert _valid_checkpoint("changelog", 0, store, ends, "topic-A") is None
        assert store.get(b"a") is None


def test_a_store_from_before_topic_ids_adopts_the_changelog_it_is_in() -> None:
    store = _checkpointed(6, None)
    assert _valid_checkpoint("changelog", 0, store, (0, 9), "topic-A") == 6
    assert store.changelog_id() == "topic-A"
