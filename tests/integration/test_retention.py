"""Retention of ended sagas: removed from the store with a changelog tombstone, and a restore from
the changelog alone does not bring them back."""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from typing import Any

import pytest

from sagastream.core.state import SagaState, decode_state
from sagastream.ops.client import Client
from sagastream.runtime.kafka_io import read_to_end
from sagastream.runtime.store import RocksStore
from sagastream.wire.dlq import read_dead_letter_headers
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import loan_applied, place_order, wait_in_log, wait_outcomes

pytestmark = pytest.mark.integration

RETENTION_MS = 2_000
LOAN_HANDLERS = "credit,documents,disbursement"


@pytest.fixture
def topology_patch():
    def patch(data):
        data["sagas"]["order"]["retention_ms"] = RETENTION_MS

    return patch


def _stored(ns: Any, keys: set[str]) -> set[str]:
    """Which of the keys the orchestrator's RocksDB stores hold (its process must be stopped)."""
    base = ns.settings.data_dir / ns.settings.group("orchestrator")
    paths = sorted(base.glob("instance-*/p*"))
    assert paths, f"no stores under {base}"
    held: set[str] = set()
    for path in paths:
        store = RocksStore(path)
        try:
            held |= {k for k in keys if store.get(k.encode()) is not None}
        finally:
            store.close()
    return held


def _changelog(ns: Any) -> dict[str, list[tuple[int, SagaState | None]]]:
    """Every committed changelog record per key, in offset order: (its time, the state)."""
    topic = ns.settings.changelog_topic()
    records: dict[str, list[tuple[int, SagaState | None]]] = defaultdict(list)
    for m in read_to_end(ns.settings, [topic], "test-changelog", timeout=60):
        value = m.value()
        state = None if value is None else decode_state(value)
        records[(m.key() or b"").decode()].append((m.timestamp()[1], state))
    return records


def test_ended_sagas_leave_the_store_and_a_restore_does_not_bring_them_back(
    ns: Any, start_workers: Any
) -> None:
    orchestrator = start_workers("orchestrator")
    start_workers(f"{HANDLERS},{LOAN_HANDLERS}")
    completed = {f"order-kept-{i}" for i in range(4)}
    compensated = {f"order-declined-{i}" for i in range(2)}
    orders = completed | compensated
    for key in sorted(completed):
        place_order(ns, key)
    for key in sorted(compensated):
        place_order(ns, key, card_token="tok_decline")
    loan = loan_applied("retained-loan")
    with Client(ns.settings) as client:
        client.start(loan)
        outcomes = wait_outcomes(ns, orders)
        assert {k for k, m in outcomes.items() if m.event_type == "SagaCompensated"} == compensated

        # retention over: each order saga goes with a timer tick and the next commit
        deadline = time.monotonic() + 30
        while any(client.describe("order", k) is not None for k in orders):
            assert time.monotonic() < deadline, "ended sagas are still described after 30 s"
            time.sleep(0.5)
        waiting = client.describe("loan", "retained-loan")
        assert waiting is not None and waiting.status == "running"

        # a late result of a removed saga finds no saga: dead-lettered, nothing restarts
        late = sorted(completed)[0]
        charged = {"order_id": late, "payment_id": "p-late", "amount_cents": 1}
        ns.client.publish("PaymentCharged", late, charged)
        ns.client.flush()
        dlq = ns.topic(ns.topology.dlq("payments.events"))
        letters = ns.client.read([dlq], lambda ms: any(m.key == late.encode() for m in ms), 30)
        letter = next(m for m in letters if m.key == late.encode())
        headers = read_dead_letter_headers(letter.headers)
        assert headers["reason"] == "saga"
        assert "no saga found for PaymentCharged" in headers["error"]
        assert client.describe("order", late) is None

    # the changelog (read_committed) ends each ended saga with one tombstone, written once its
    # retention was over
    changelog = _changelog(ns)
    lags = []
    for key in orders:
        (removed_at, tombstone), (_, last) = changelog[key][-1], changelog[key][-2]
        assert tombstone is None and [s for _, s in changelog[key]].count(None) == 1
        assert last is not None and last.status in ("completed", "compensated")
        assert last.ended is not None and last.expires == last.ended + RETENTION_MS
        assert removed_at >= last.expires
        lags.append(removed_at - last.expires)
    print(f"tombstones written {min(lags)}..{max(lags)} ms after the retention ended")
    assert changelog["retained-loan"][-1][1] is not None

    code, _ = orchestrator.terminate("orchestrator")
    assert code == 0
    assert _stored(ns, orders | {"retained-loan"}) == {"retained-loan"}

    # a lost data directory is rebuilt from the changelog alone, tombstones included
    shutil.rmtree(ns.settings.data_dir / ns.settings.group("orchestrator"))
    again = start_workers("orchestrator")
    wait_in_log(again.log_dir / "orchestrator.log", "assigned partitions")  # restored
    time.sleep(1.0)  # ticks: a saga restored past its expiry would be removed again, once more
    code, _ = again.terminate("orchestrator")
    assert code == 0
    assert _stored(ns, orders | {"retained-loan"}) == {"retained-loan"}
    changelog = _changelog(ns)
    tombstones = {k: [s for _, s in changelog[k]].count(None) for k in orders}
    assert set(tombstones.values()) == {1}, f"a restore brought one back: {tombstones}"
    with Client(ns.settings) as client:
        assert all(client.describe("order", k) is None for k in orders)
        assert client.describe("loan", "retained-loan") is not None
