"""The console's view data: DAG layers, the Gantt timeline's bars, the overview's counts and
percentiles, the sagas page's filters and paging, and the escaping of what the SVG draws."""

from __future__ import annotations

from sagastream.console.layout import Bar, Mark, dag_layout, lane_order, layer_of, timeline
from sagastream.console.svg import dag_svg, rate_svg, timeline_svg
from sagastream.console.views import (
    IndexedSaga,
    Outcome,
    SagaQuery,
    minute_of,
    overview,
    page_of,
    percentile,
    version_matches,
)
from sagastream.ops.inspect import Change

LOAN = {
    "credit_check": (),
    "documents": (),
    "review": ("credit_check", "documents"),
    "disbursement": ("review",),
}


def test_parallel_steps_share_a_layer_and_a_step_comes_after_its_deepest_dependency() -> None:
    assert layer_of(LOAN) == {"credit_check": 0, "documents": 0, "review": 1, "disbursement": 2}
    assert layer_of({"a": (), "b": ("a",), "c": ("a", "b")}) == {"a": 0, "b": 1, "c": 2}
    layout = dag_layout(LOAN)
    rows = {n.name: (n.layer, n.row) for n in layout.nodes}
    assert rows == {
        "credit_check": (0, 0),
        "documents": (0, 1),
        "review": (1, 0),
        "disbursement": (2, 0),
    }
    assert sorted(layout.edges) == [
        ("credit_check", "review"),
        ("documents", "review"),
        ("review", "disbursement"),
    ]
    assert (layout.layers, layout.rows) == (3, 2)
    assert lane_order({"late": ("early",), "early": ()}) == ["early", "late"]


def changes(*rows: tuple[int, str, str | None]) -> list[Change]:
    return [Change(at, what, step) for at, what, step in rows]


def test_a_retried_step_gets_a_run_per_attempt_with_its_wait_between() -> None:
    history = changes(
        (1000, "started", None),
        (1010, "step_started", "pay"),
        (1010, "step_started", "stock"),
        (1100, "step_retry_scheduled", "pay"),
        (1300, "step_started", "pay"),
        (1400, "step_succeeded", "pay"),
        (1500, "step_succeeded", "stock"),
        (1500, "completed", None),
    )
    line = timeline(history, ["pay", "stock"], (), 1000, 1500)
    assert line.bars == [
        Bar("pay", "run", 1, 1010, 1100, False, "retry"),
        Bar("pay", "retry_wait", 1, 1100, 1300, False, ""),
        Bar("pay", "run", 2, 1300, 1400, False, "succeeded"),
        Bar("stock", "run", 1, 1010, 1500, False, "succeeded"),
    ]
    assert (line.origin_ms, line.span_ms, line.lanes) == (1000, 500, ["pay", "stock"])


def test_compensations_follow_the_run_and_an_open_human_wait_runs_to_now() -> None:
    history = changes(
        (0, "step_started", "pay"),
        (0, "step_started", "review"),
        (50, "step_escalated", "review"),
        (100, "step_failed", "pay"),
        (100, "compensation_started", "ship"),
        (120, "compensation_retry_scheduled", "ship"),
        (150, "compensation_started", "ship"),
        (170, "step_compensated", "ship"),
    )
    line = timeline(history, ["pay", "review"], {"review"}, 0, 900)
    assert line.lanes == ["pay", "review", "ship"]  # a step the lanes lack comes last
    assert line.bars == [
        Bar("pay", "run", 1, 0, 100, False, "failed"),
        Bar("review", "wait", 1, 0, 900, True, ""),
        Bar("ship", "compensation", 1, 100, 120, False, "retry"),
        Bar("ship", "undo_wait", 1, 120, 150, False, ""),
        Bar("ship", "compensation", 2, 150, 170, False, "compensated"),
    ]
    assert line.marks == [Mark("review", "escalated", 50)]


def test_the_pictures_escape_every_name_and_colour_steps_by_state() -> None:
    evil = "<script>alert(1)</script>"
    dag = str(dag_svg(dag_layout({evil: (), "b": (evil,)}), {evil: "succeeded"}))
    assert "<script>" not in dag and "&lt;script&gt;" in dag
    assert 'class="step state-succeeded"' in dag and 'class="step state-none"' in dag
    line = timeline(changes((0, "step_started", evil), (10, "step_succeeded", evil)), [], (), 0, 10)
    drawn = str(timeline_svg(line))
    assert "<script>" not in drawn and drawn.count("&lt;script&gt;") >= 2
    assert 'class="bar run"' in drawn


def summary(
    key: str, status: str, started: int, ended: int | None = None, **kw: str
) -> IndexedSaga:
    return IndexedSaga(
        kw.get("saga", "order"), key, 0, status, started, ended, None, None, kw.get("shape")
    )


def test_the_overview_counts_per_minute_and_takes_latency_of_sagas_ended_in_the_window() -> None:
    now = 10 * 60_000 + 30_000  # half past minute 10
    states = [
        summary("a", "completed", now - 60_000, now - 60_000 + 100),
        summary("b", "compensated", now - 2_000, now - 2_000 + 300),
        summary("c", "running", now - 5_000),
        summary("d", "running", now - 3 * 60_000),
        summary("old", "completed", 0, 1000),  # outside a 5-minute window
        summary("l", "running", now - 1_000, saga="loan"),
    ]
    outcomes = [
        Outcome("order", "SagaCompleted", now - 60_000 + 100),
        Outcome("order", "SagaCompensated", now - 2_000 + 300),
        Outcome("order", "SagaCompleted", 0),  # outside
    ]
    rows = {r.saga: r for r in overview(["order", "loan", "idle"], states, outcomes, now, 5)}
    order = rows["order"]
    assert order.per_minute["started"] == [0, 1, 0, 1, 2]
    assert order.per_minute["completed"] == [0, 0, 0, 1, 0]
    assert order.per_minute["compensated"] == [0, 0, 0, 0, 1]
    assert order.totals == {"started": 4, "completed": 1, "compensated": 1, "failed": 0}
    assert order.latency_ms == {"p50": 100, "p95": 300, "p99": 300}
    assert (order.running, order.oldest_running_ms) == (2, 3 * 60_000)
    assert (rows["loan"].running, rows["loan"].totals["started"]) == (1, 1)
    assert rows["idle"].latency_ms == {"p50": None, "p95": None, "p99": None}
    assert rows["idle"].oldest_running_ms is None


def test_nearest_rank_percentiles_and_minute_buckets() -> None:
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 95, 99, 100)] == [50, 95, 99, 100]
    assert percentile([7], 99) == 7 and percentile([], 50) is None
    assert minute_of(119_999, 120_000, 3) == 1 and minute_of(120_000, 120_000, 3) == 2
    assert minute_of(0, 180_000, 3) is None and minute_of(240_000, 180_000, 3) is None


def test_the_sagas_page_filters_by_key_age_and_version_and_pages_oldest_first() -> None:
    rows = [
        summary(f"k{i}", "running", 1000 + i, shape="abc" if i % 2 else "def") for i in range(7)
    ]
    versions = {"abc": 1, "def": 2}
    first = page_of(rows, SagaQuery(size=3), versions, 2000)
    assert [r.key for r in first.rows] == ["k0", "k1", "k2"] and (first.matched, first.pages) == (
        7,
        3,
    )
    last = page_of(rows, SagaQuery(size=3, page=9), versions, 2000)  # past the end: the last
    assert [r.key for r in last.rows] == ["k6"] and last.page == 3
    assert [r.key for r in page_of(rows, SagaQuery(version="v1"), versions, 0).rows] == [
        "k1",
        "k3",
        "k5",
    ]
    assert page_of(rows, SagaQuery(version="de"), versions, 0).matched == 4
    assert [r.key for r in page_of(rows, SagaQuery(key="6"), versions, 0).rows] == ["k6"]
    assert page_of(rows, SagaQuery(older_than_ms=998), versions, 2000).matched == 3
    assert not version_matches("2", None, versions) and version_matches("", None, versions)


def test_the_rate_chart_draws_a_bar_per_minute_with_counts_and_says_how_many_in_all() -> None:
    drawn = str(rate_svg({"started": [0, 2, 0, 5], "failed": [0, 0, 0, 0]}, ("started", "failed")))
    assert drawn.count('class="rate started"') == 2 and 'class="rate failed"' not in drawn
    assert "<title>5 started, 0 min ago</title>" in drawn
    assert "<title>2 started, 2 min ago</title>" in drawn
    assert ">started 7</text>" in drawn and ">failed 0</text>" in drawn
