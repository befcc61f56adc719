"""The pure parts of `sagastream bench --restore`: saga states, changelog, worker log, table."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from sagastream.core.state import decode_state, encode_state
from sagastream.core.topology import load_topology
from sagastream.ops import bench_restore as br
from sagastream.runtime.settings import Settings
from sagastream.runtime.store import MemoryStore
from tests.unit.test_bench import bench_options

NOW = 1_700_000_000_000


@pytest.fixture(scope="module")
def states() -> br.OrderStates:
    return br.OrderStates(
        load_topology(Settings().topology_file, Settings().schemas_path), NOW, seed=7
    )


def test_a_started_saga_has_every_step_sent_and_its_timers_armed(states: br.OrderStates) -> None:
    state = states.started(3)
    assert state.key == "order-000003" and state.status == "running"
    assert state.data["start"]["order_id"] == "order-000003"
    assert {s.status for s in state.steps.values()} == {"running"}
    spec = states.definition[1]
    assert state.timers == {
        "deadline||0": NOW + spec.deadline_ms,
        **{f"step_timeout|{n}|1": NOW + s.answer_within_ms for n, s in spec.steps.items()},
    }
    assert decode_state(encode_state(state)) == state  # the orchestrator can store it
    assert states.started(3) == state  # a function of (seed, i, now)
    assert states.started(4).seen != state.seen


def test_a_result_moves_the_saga_on_and_disarms_its_step_timeout(states: br.OrderStates) -> None:
    paid = states.paid(10, states.started(10))
    assert paid.steps["payment"].status == "succeeded" and paid.order == ["payment"]
    assert "step_timeout|payment|1" not in paid.timers and len(paid.timers) == 3
    assert paid.data["payment"]["payment_id"].startswith("pay-")
    assert states.stored(10) == paid and states.stored(11) == states.started(11)
    reserved = states.reserved(10, paid)
    assert reserved.order == ["payment", "inventory"] and len(reserved.timers) == 2


def test_the_changelog_writes_every_saga_then_one_in_ten_again(states: br.OrderStates) -> None:
    txns = list(br.changelog_transactions(states, 45, per_transaction=10))
    keys = [k for txn in txns for k, _ in txn]
    assert len(keys) == 45 + 4
    assert {k for k, n in Counter(keys).items() if n == 2} == {
        br.saga_key(i).encode() for i in (10, 20, 30, 40)
    }
    assert all(len(txn) <= 11 for txn in txns)
    # an update comes in a later transaction than its saga's start
    first: dict[bytes, int] = {}
    for t, txn in enumerate(txns):
        for key, value in txn:
            if key in first:
                assert t > first[key] and decode_state(value).order == ["payment"]
            first.setdefault(key, t)


def test_the_changelog_restores_to_the_stored_states_and_their_timers(
    states: br.OrderStates,
) -> None:
    store = MemoryStore()
    offset = 0
    for txn in br.changelog_transactions(states, 45, per_transaction=10):
        for key, value in txn:  # one record at a time, as restore meets them
            store.apply({key: value}, offset)
            offset += 1
    assert br.count_held(store) == (45, 45 * 4 - 4)
    assert decode_state(store.get(b"order-000020") or b"") == states.stored(20)
    restart = br.restart_changes(states, 45, k=9)
    assert len({k for k, _ in restart}) == 9
    store.apply(dict(restart), offset)
    assert br.count_held(store) == (45, 45 * 4 - 4 - 9)


def test_restart_changes_never_ask_for_more_sagas_than_there_are(states: br.OrderStates) -> None:
    assert [k for k, _ in br.restart_changes(states, 3, k=1000)] == [
        b"order-000001",
        b"order-000002",
        b"order-000003",
    ]


LOG = """\
2025-03-01 10:00:01,000 INFO sagastream.worker: worker running orchestrator
2025-03-01 10:00:01,250 INFO sagastream.orchestrator: orchestrator consuming t-orders.events
2025-03-01 10:00:03,100 INFO sagastream.orchestrator: partition 0 restored: 10 changelog records from the start
2025-03-01 10:00:03,100 INFO sagastream.orchestrator: partition 1 restored: 0 changelog records from 7
"""


def _epoch(clock: str) -> float:
    from datetime import datetime

    return datetime.strptime(f"2025-03-01 {clock}", "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_worker_is_ready_once_every_partition_is_restored_and_assigned() -> None:
    partial = br.parse_worker_log(LOG, 2)
    assert partial.ready_at is None and partial.restored == {0: 10, 1: 0}
    assert partial.consuming_at == _epoch("10:00:01,250")
    ready = br.parse_worker_log(
        LOG
        + "2025-03-01 10:00:03,125 INFO sagastream.orchestrator: assigned partitions [0, 1]\n"
        + "2025-03-01 10:00:09,000 INFO sagastream.orchestrator: assigned partitions [0, 1]\n",
        2,
    )
    assert ready.ready_at == _epoch("10:00:03,125") and ready.failures == []


def test_a_partial_assignment_is_not_ready_and_errors_are_kept() -> None:
    got = br.parse_worker_log(
        LOG
        + "2025-03-01 10:00:04,000 ERROR sagastream.orchestrator: orchestrator session failed (x)\n"
        + "a traceback line\n"
        + "2025-03-01 10:00:05,000 INFO sagastream.orchestrator: assigned partitions [0, 1]\n",
        3,
    )
    assert got.ready_at is None
    assert got.failures == ["orchestrator session failed (x)"]


def test_the_table_has_a_row_per_run_and_the_targets_on_the_worker_rows() -> None:
    run: dict[str, Any] = {
        "records": 110_000,
        "seconds": 9.5,
        "records_per_s": 11_578.9,
        "cpu_s": 8.0,
        "disk_mb": 120.0,
    }
    result = {
        "sagas": 100_000,
        "partitions": 4,
        "changelog_records": 110_000,
        "restart_records": 1000,
        "target_s": br.TARGET_S,
        "runs": [
            {"from": "empty", "where": "in-process", **run},
            {
                "from": "empty",
                "where": "worker",
                **run,
                "records_per_s": None,
                "up_s": 0.5,
                "failures": ["x"],
                "log": "/l",
            },
            {"from": "checkpoint", "where": "worker", **run, "records": 1000},
        ],
    }
    lines = br.format_restore(result)
    assert "100,000 sagas in 4 partitions" in lines[1]
    rows = [line for line in lines if line.startswith(("  empty", "  checkpoint"))]
    assert len(rows) == 3
    assert "11,579" in rows[0] and "< 30 s" in rows[1] and "< 5 s" in rows[2]
    assert any("1 errors, see /l" in line for line in lines)
    assert any("0.50s to subscribe" in line and "9.00s to join" in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "restore", "saga_phases"),
    [
        ([], None, True),
        (["--restore", "1000"], 1000, False),
        (["--restore", "1000", "--rates", "100"], 1000, True),
        (["--restore", "1000", "--orders", "50"], 1000, True),
    ],
)
def test_restore_alone_runs_only_the_restore_measurement(
    argv: list[str], restore: int | None, saga_phases: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = bench_options(argv, monkeypatch)
    assert (options.restore, options.saga_phases) == (restore, saga_phases)
    assert options.rates == ((100.0,) if "--rates" in argv else (100.0, 300.0, 600.0))
