"""One contract for both partition stores: RocksDB (rocksdict) and its in-memory twin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sagastream.core.state import decode_state
from sagastream.runtime.store import (
    EXPIRY,
    MemoryStore,
    PartitionStore,
    RocksStore,
    parse_timer_index_key,
    timer_index_key,
)
from tests.unit.states import state_bytes


def state(**timers: int) -> bytes:
    return state_bytes(timers=timers)


@pytest.fixture(params=["rocksdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PartitionStore]:
    s: PartitionStore = RocksStore(tmp_path / "p0") if request.param == "rocksdb" else MemoryStore()
    yield s
    s.close()


def test_empty_store_has_no_checkpoint_and_nothing_due(store: PartitionStore) -> None:
    assert store.checkpoint() is None
    assert store.get(b"k") is None
    assert store.due(10**12, 10) == []


def test_apply_writes_states_and_checkpoint_together(store: PartitionStore) -> None:
    store.apply({b"a": state(), b"b": state()}, 41)
    assert store.checkpoint() == 41
    assert decode_state(store.get(b"a") or b"").status == "running"
    assert [k for k, _ in store.states()] == [b"a", b"b"]


def test_none_deletes_a_state_and_its_timers(store: PartitionStore) -> None:
    store.apply({b"a": state(**{"retry|pay|1": 100})}, 1)
    store.apply({b"a": None}, 2)
    assert store.get(b"a") is None
    assert store.due(10**12, 10) == []
    assert list(store.states()) == []


def test_due_index_follows_armed_timers_oldest_first(store: PartitionStore) -> None:
    store.apply(
        {
            b"a": state(**{"step_timeout|pay|1": 300, "deadline||0": 900}),
            b"b": state(**{"retry|ship|2": 100}),
        },
        5,
    )
    assert store.due(299, 10) == [(100, "retry|ship|2", b"b")]
    assert store.due(300, 10) == [(100, "retry|ship|2", b"b"), (300, "step_timeout|pay|1", b"a")]
    assert store.due(10**6, 1) == [(100, "retry|ship|2", b"b")]
    # re-armed and disarmed: the old due times are gone from the index
    store.apply({b"a": state(**{"step_timeout|pay|2": 500}), b"b": state()}, 6)
    assert store.due(10**6, 10) == [(500, "step_timeout|pay|2", b"a")]


def test_an_ended_saga_is_indexed_by_its_expiry_until_a_tombstone_removes_it(
    store: PartitionStore,
) -> None:
    ended = state_bytes(status="completed", ended=600, expires=700)
    store.apply({b"a": state(**{"deadline||0": 900}), b"b": state()}, 1)
    store.apply({b"a": ended}, 2)
    assert store.due(699, 10) == []
    assert store.due(700, 10) == [(700, EXPIRY, b"a")]
    store.apply({b"a": None}, 3)  # the tombstone the expiry wrote to the changelog
    assert store.get(b"a") is None and store.due(10**12, 10) == []
    assert [k for k, _ in store.states()] == [b"b"] and store.checkpoint() == 3


def test_known_old_timers_spare_the_read(store: PartitionStore) -> None:
    store.apply({b"a": state(**{"retry|pay|1": 100})}, 1)
    store.apply(
        {b"a": state(**{"retry|pay|2": 200})},
        2,
        timers={b"a": ({"retry|pay|1": 100}, {"retry|pay|2": 200})},
    )
    assert store.due(10**6, 10) == [(200, "retry|pay|2", b"a")]


def test_wipe_forgets_everything(store: PartitionStore) -> None:
    store.apply({b"a": state(**{"retry|pay|1": 100})}, 9)
    store.wipe()
    assert store.checkpoint() is None
    assert store.get(b"a") is None
    assert store.due(10**6, 10) == []


def test_saga_keys_with_separators_round_trip_through_the_index() -> None:
    key = b"order|1\xff:x"
    raw = timer_index_key(1234, "retry|pay|1", key)
    assert parse_timer_index_key(raw) == (1234, "retry|pay|1", key)


def test_rocksdb_store_keeps_its_data_across_reopen(tmp_path: Path) -> None:
    first = RocksStore(tmp_path / "p3")
    first.apply({b"a": state(**{"deadline||0": 50})}, 77)
    first.close()
    again = RocksStore(tmp_path / "p3")
    try:
        assert again.checkpoint() == 77
        assert again.due(100, 10) == [(50, "deadline||0", b"a")]
    finally:
        again.close()


def test_a_timer_armed_below_the_last_tick_is_still_found(store: PartitionStore) -> None:
    store.apply({b"a": state(**{"retry|pay|1": 500})}, 1)
    assert store.due(1000, 10) == [(500, "retry|pay|1", b"a")]
    store.apply({b"a": state()}, 2)  # fired
    assert store.due(2000, 10) == []
    # committed late: due before the last tick's time
    store.apply({b"b": state(**{"retry|ship|1": 1500})}, 3)
    assert store.due(2000, 10) == [(1500, "retry|ship|1", b"b")]
    store.apply({b"c": state(**{"deadline||0": 2500})}, 4)
    assert store.due(3000, 10) == [(1500, "retry|ship|1", b"b"), (2500, "deadline||0", b"c")]
