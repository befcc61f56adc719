"""The console's index without Kafka: changelog records in offset order (the newest state per
key, a tombstone removes it, a bad record hides only its key), the sagas page's filters, orders
and pages over it, the sagas waiting for a person, the overview's numbers, the dead letters
counted, what it says of its freshness, and when a partition is read to its end."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from sagastream.console.index import SETTLE_S, Reading, SagaIndex, human_steps
from sagastream.console.views import Outcome, SagaQuery
from sagastream.core.state import StepState
from sagastream.core.topology import load_topology
from tests.unit.states import state_bytes
from tests.unit.test_old_states import ROOT

T0 = 1_800_000_000_000
LOAN = {"credit_check": (), "documents": (), "review": (), "disbursement": ()}


def running(*names: str) -> dict[str, StepState]:
    return {name: StepState("running" if name in names else "pending") for name in LOAN}


def filled() -> SagaIndex:
    """Six orders (two finished) and two loans, one of them waiting at its human review."""
    index = SagaIndex({"loan": frozenset({"review"})})
    for i in range(6):
        status = "completed" if i in (1, 4) else "running"
        ended = T0 + i * 1000 + 500 if status == "completed" else None
        value = state_bytes(key=f"ord-{i}", status=status, started=T0 + i * 1000, ended=ended)
        index.put(f"ord-{i}".encode(), i % 3, value, T0 + 10_000 - i)
    for key, steps in (("loan-a", running("review")), ("loan-b", running("documents"))):
        value = state_bytes(saga="loan", key=key, started=T0 + 100, steps=steps, shape="abc")
        index.put(key.encode(), 0, value, T0 + 20_000)
    return index


def keys(index: SagaIndex, now: int = T0 + 60_000, **query: object) -> list[str]:
    return [s.key for s in index.sagas(SagaQuery(**query), {"abc": 2}, now).rows]  # type: ignore[arg-type]


def test_the_newest_record_of_a_key_wins_and_a_tombstone_removes_it() -> None:
    index = filled()
    index.put(b"ord-0", 0, state_bytes(key="ord-0", status="failed", started=T0), T0 + 30_000)
    index.put(b"ord-2", 2, None, T0 + 30_000)
    index.put(b"bad", 1, b"SS\x05{}", T0)  # hidden, and the others still shown
    assert keys(index, status="failed") == ["ord-0"]
    assert "ord-2" not in keys(index) and "bad" not in keys(index)
    fresh = index.freshness()
    assert (fresh.records, fresh.sagas) == (11, 7)


def test_the_sagas_page_filters_by_type_status_key_age_version_and_waiting() -> None:
    index = filled()
    assert keys(index, saga="loan") == ["loan-a", "loan-b"]
    assert keys(index, saga="order", status="completed") == ["ord-1", "ord-4"]
    assert keys(index, key="ord-") == [f"ord-{i}" for i in range(6)]
    assert keys(index, key="n-b") == ["loan-b"]
    # started at least 57.5 s before T0 + 60 s: ord-0, ord-1, ord-2 and the loans
    assert keys(index, older_than_ms=57_500) == ["ord-0", "loan-a", "loan-b", "ord-1", "ord-2"]
    assert keys(index, version="v2") == ["loan-a", "loan-b"] == keys(index, version="ab")
    assert keys(index, waiting=True) == ["loan-a"]
    waiting = index.sagas(SagaQuery(waiting=True), {}, T0).rows[0]
    assert waiting.waiting == ("review",)


def test_the_sagas_page_sorts_and_pages() -> None:
    index = filled()
    assert keys(index, sort="newest", size=3) == ["ord-5", "ord-4", "ord-3"]
    # the loans' states were written last
    assert keys(index, sort="updated", size=3) == ["loan-a", "loan-b", "ord-0"]
    page = index.sagas(SagaQuery(size=3, page=2), {}, T0)
    assert [s.key for s in page.rows] == ["ord-1", "ord-2", "ord-3"]
    assert (page.matched, page.page, page.pages) == (8, 2, 3)
    last = index.sagas(SagaQuery(size=3, page=99), {}, T0)  # past the end: the last page
    assert [s.key for s in last.rows] == ["ord-4", "ord-5"] and last.page == 3


def test_it_says_it_is_loading_until_every_partition_was_read_to_its_end() -> None:
    index = filled()
    fresh = index.freshness()
    assert not fresh.loaded and fresh.as_of_ms is None
    index.progress(False, 40, T0, 1.5)
    assert not index.freshness().loaded and index.freshness().behind == 40
    index.progress(True, 0, T0 + 5, 2.5)
    fresh = index.freshness()
    assert (fresh.loaded, fresh.as_of_ms, fresh.behind, fresh.catch_up_s) == (True, T0 + 5, 0, 2.5)
    index.progress(False, 3, T0 + 9, 9.0)  # new records: still loaded, as of before them
    fresh = index.freshness()
    assert (fresh.loaded, fresh.as_of_ms, fresh.behind, fresh.catch_up_s) == (True, T0 + 5, 3, 2.5)
    index.failed("broker away")  # said, while what was read stays shown
    index.progress(True, 0, T0 + 20, 20.0)
    fresh = index.freshness()
    assert (fresh.error, fresh.loaded, fresh.as_of_ms) == ("broker away", True, T0 + 20)
    index.failed(None)
    assert index.freshness().error is None
    index.clear()  # a rebuild
    fresh = index.freshness()
    assert (fresh.loaded, fresh.records, fresh.sagas, keys(index)) == (False, 0, 0, [])


def test_the_overview_counts_what_the_index_holds_and_the_hours_outcomes() -> None:
    index = filled()
    now = T0 + 60_000
    index.outcome(Outcome("order", "SagaCompleted", T0 + 1500), now)
    index.outcome(Outcome("order", "SagaCompleted", T0 - 2 * 3_600_000), now)  # before the hour
    rows = {t.saga: t for t in index.overview(["order", "loan"], now)}
    assert (rows["order"].running, rows["order"].oldest_running_ms) == (4, 60_000)
    assert rows["order"].totals["started"] == 6 and rows["order"].totals["completed"] == 1
    assert rows["order"].latency_ms["p50"] == 500
    assert (rows["loan"].running, rows["loan"].oldest_running_ms) == (2, 59_900)


def test_a_page_waits_for_the_index_to_be_whole_or_to_fail() -> None:
    index = filled()
    assert not index.freshness(0.01).loaded  # waited a moment: still loading, said so
    done = threading.Timer(0.05, index.progress, (True, 0, T0, 0.05))
    done.start()
    assert index.freshness(30).loaded  # returns once whole (the bound is a hang guard)
    index.clear()
    failing = threading.Timer(0.05, index.failed, ("no changelog",))
    failing.start()
    fresh = index.freshness(30)
    assert (fresh.loaded, fresh.error) == (False, "no changelog")


def test_dead_letters_are_counted_by_topic_and_reason() -> None:
    index = SagaIndex({})
    for topic, reason, at in (
        ("b.dlq", "undecodable", 30),
        ("a.dlq", "no key", None),
        ("b.dlq", "undecodable", 10),
    ):
        index.dead_letter(topic, reason, at)
    groups = [(g.topic, g.reason, g.count, g.first_ms, g.last_ms) for g in index.dead_letters()]
    assert groups == [("a.dlq", "no key", 1, None, None), ("b.dlq", "undecodable", 2, 10, 30)]


def test_human_steps_are_gathered_over_every_version_of_a_saga() -> None:
    sagas = load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas
    assert human_steps(sagas.items()) == {"order": frozenset(), "loan": frozenset({"review"})}


class Watermarks:
    """A consumer's high watermarks as its last fetches brought them."""

    def __init__(self, *highs: int) -> None:
        self.highs = highs

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        assert cached  # never a request to the broker per loop
        return 0, self.highs[tp.partition]


def test_a_partition_one_short_of_its_end_after_a_record_is_at_its_end_once_settled() -> None:
    """librdkafka may not report a partition's end after a transaction's closing marker: one
    offset short of the high watermark, with no record for SETTLE_S, is the end."""
    reading = Reading("changelog", 3)
    reading.reached_end("changelog", 0, 0)  # an empty partition: told
    reading.reached_end("changelog", 2, 12)
    reading.read(1, 6)  # its last record; the commit marker is 7, the high watermark 8
    consumer: Any = Watermarks(0, 8, 12)
    assert reading.settle(consumer) == 1 and not reading.at_end()  # just read: more may come
    reading.last_read[1] -= SETTLE_S
    assert reading.settle(consumer) == 0 and reading.at_end()
    reading.read(2, 12)  # a record after an end: not at the end until told or settled
    assert not reading.at_end()
    reading.last_read[2] -= SETTLE_S
    assert reading.settle(Watermarks(0, 8, 15)) == 2 and not reading.at_end()  # two to read


def test_the_sagas_page_reads_its_order_and_waiting_filter_from_the_query_string() -> None:
    from starlette.requests import Request

    from sagastream.console.app import _query
    from sagastream.errors import UsageError

    sagas = load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas

    def query(text: str) -> SagaQuery:
        scope = {"type": "http", "method": "GET", "path": "/sagas", "headers": []}
        return _query(Request({**scope, "query_string": text.encode()}), sagas)

    assert (query("").sort, query("").waiting) == ("oldest", False)
    assert (query("sort=updated&waiting=1").sort, query("waiting=1").waiting) == ("updated", True)
    with pytest.raises(UsageError, match="unknown order 'sideways'; one of oldest, newest"):
        query("sort=sideways")
