"""`saga show` without a broker: key partitioning, the view of a state and its history, the report."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sagastream.core.state import SagaState, StepState
from sagastream.examples.events import PaymentCharged
from sagastream.ops.client import Client
from sagastream.ops.inspect import (
    Change,
    SagaFilter,
    StepView,
    TimerView,
    age,
    build_view,
    format_list,
    format_view,
    oldest_first,
    parse_timers,
    step_views,
    summarize,
    view_json,
)
from sagastream.ops.times import parse_duration
from sagastream.runtime.settings import Settings
from sagastream.wire.partitioner import murmur2, partition_for
from tests.unit.states import a_state

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z

# org.apache.kafka.common.utils.UtilsTest.testMurmur2
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_MURMUR2.items())
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_is_the_positive_hash_modulo_the_partition_count() -> None:
    # Utils.toPositive(murmur2(key)) % n, as the Java client's and librdkafka's murmur2 partitioners
    for key, hashed in JAVA_MURMUR2.items():
        for n in (1, 4, 7, 12):
            assert partition_for(key, n) == (hashed & 0x7FFFFFFF) % n
    assert partition_for(b"", 4) == (murmur2(b"") & 0x7FFFFFFF) % 4


def state(**overrides: Any) -> SagaState:
    """A compensated order saga's state."""
    fields: dict[str, Any] = {
        "status": "compensated",
        "steps": {
            "payment": StepState("failed", 3, 0),
            "inventory": StepState("compensated", 1, 2),
            "shipping": StepState("cancelled", 0, 0),
        },
        "started": T0,
        "ended": T0 + 2_000,
        "reason": "payment: card declined",
        "failed_step": "payment",
    }
    return a_state(**{**fields, **overrides})


HISTORY = [
    Change(T0 + 10, "started"),
    Change(T0 + 10, "step_started", "payment"),
    Change(T0 + 10, "step_started", "inventory"),
    Change(T0 + 80, "step_succeeded", "inventory"),
    Change(T0 + 90, "step_retry_scheduled", "payment"),
    Change(T0 + 400, "step_started", "payment"),
    Change(T0 + 500, "step_retry_scheduled", "payment"),
    Change(T0 + 900, "step_started", "payment"),
    Change(T0 + 1_000, "step_failed", "payment"),
    Change(T0 + 1_000, "compensating", "payment"),
    Change(T0 + 1_000, "compensation_started", "inventory"),
    Change(T0 + 1_300, "compensation_retry_scheduled", "inventory"),
    Change(T0 + 1_500, "compensation_started", "inventory"),
    Change(T0 + 1_990, "step_compensated", "inventory"),
    Change(T0 + 2_010, "compensated"),
]


def test_step_times_come_from_the_first_start_and_the_last_end_of_each_run() -> None:
    steps = step_views(state().steps, HISTORY)
    assert steps == [
        StepView("payment", "failed", 3, 0, T0 + 10, T0 + 1_000),
        StepView("inventory", "compensated", 1, 2, T0 + 10, T0 + 80, T0 + 1_000, T0 + 1_990),
        StepView("shipping", "cancelled", 0, 0),
    ]


def test_a_history_of_outcomes_only_gives_no_step_times() -> None:
    outcomes = [Change(T0, "started"), Change(T0 + 5, "compensated")]
    steps = step_views(state().steps, outcomes)
    assert all(s.started_ms is None and s.ended_ms is None for s in steps)


def test_timers_are_parsed_soonest_first_and_the_deadline_has_no_step() -> None:
    timers = {"deadline||0": T0 + 120_000, "step_timeout|payment|2": T0 + 15_000}
    assert parse_timers(timers) == [
        TimerView("step_timeout", "payment", 2, T0 + 15_000),
        TimerView("deadline", None, 0, T0 + 120_000),
    ]


def test_the_view_of_a_state() -> None:
    view = build_view("order", "o-1", 2, state(), HISTORY)
    assert (view.status, view.started_ms, view.ended_ms) == ("compensated", T0, T0 + 2_000)
    assert (view.failed_step, view.reason) == ("payment", "payment: card declined")
    assert view.partition == 2 and view.history == HISTORY and view.history_complete
    assert json.loads(view_json(view))["steps"][0] == {
        "name": "payment",
        "state": "failed",
        "attempts": 3,
        "compensation_attempts": 0,
        "started_ms": T0 + 10,
        "ended_ms": T0 + 1_000,
        "compensation_started_ms": None,
        "compensation_ended_ms": None,
    }


def test_report_of_an_ended_saga() -> None:
    text = "\n".join(format_view(build_view("order", "o-1", 2, state(), HISTORY), T0 + 9_000))
    assert "saga     order o-1 (partition 2)" in text
    assert "status   compensated" in text
    assert "started  2025-11-24 16:00:00.000 UTC" in text
    assert "ended    2025-11-24 16:00:02.000 UTC (+2.000s)" in text
    assert "failed   payment" in text and "reason   payment: card declined" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ")}
    assert rows["payment"] == ["payment", "failed", "3", "0", "+0.010s", "+1.000s", "-", "-"]
    assert rows["inventory"][4:] == ["+0.010s", "+0.080s", "+1.000s", "+1.990s"]
    assert "pending timers: none" in text
    assert "history (15 changes)" in text
    assert text.splitlines()[-1].split() == ["+2.010s", "compensated"]


def test_report_of_a_running_saga_shows_its_timers_and_an_incomplete_history() -> None:
    running = state(
        status="running",
        ended=None,
        reason=None,
        failed_step=None,
        timers={"step_timeout|payment|1": T0 + 15_000, "deadline||0": T0 + 120_000},
    )
    view = build_view("order", "o-1", 0, running, HISTORY[:2], history_complete=False)
    text = "\n".join(format_view(view, T0 + 5_000))
    assert "running  for 5.0s" in text and "failed" not in text.split("steps")[0]
    assert "step_timeout  payment  1        2025-11-24 16:00:15.000 UTC (in 10.0s)" in text
    assert "deadline      -        0        2025-11-24 16:02:00.000 UTC (in 115.0s)" in text
    assert "stopped at the scan limit" in text
    late = "\n".join(format_view(view, T0 + 16_000))
    assert "2025-11-24 16:00:15.000 UTC (1.0s overdue)" in late


def test_start_takes_only_a_saga_start_event_and_describe_only_a_known_saga() -> None:
    # nothing is sent before these checks, so no broker is needed
    with Client(Settings(bootstrap_servers="127.0.0.1:1")) as client:
        charged = PaymentCharged(order_id="o-1", payment_id="p-1", amount_cents=100)
        with pytest.raises(
            ValueError, match=r"PaymentCharged starts no saga.*order \(OrderPlaced\)"
        ):
            client.start(charged)
        with pytest.raises(ValueError, match="unknown saga 'travel'.*order"):
            client.describe("travel", "t-1")


def test_report_of_an_ended_saga_says_when_it_is_removed() -> None:
    view = build_view("order", "o-1", 2, state(expires=T0 + 3_600_000), HISTORY)
    assert view.expires_ms == T0 + 3_600_000
    text = "\n".join(format_view(view, T0 + 9_000))
    assert "removed  2025-11-24 17:00:00.000 UTC (in 59m51s, its retention)" in text
    later = "\n".join(format_view(view, T0 + 3_600_000))
    assert "removed  2025-11-24 17:00:00.000 UTC (due now, its retention)" in later


# -- saga list ------------------------------------------------------------------------------------

MINUTE = 60_000
RUNNING_NOW = {"status": "running", "ended": None, "reason": None, "failed_step": None}


def summaries() -> list:  # type: ignore[type-arg]
    return [
        summarize("o-new", 1, state(**RUNNING_NOW, started=T0 + 50 * MINUTE)),
        summarize("o-old", 0, state(**RUNNING_NOW, started=T0)),
        summarize("o-bad", 3, state(started=T0 + 10 * MINUTE)),
        summarize("l-1", 2, state(saga="loan", status="completed", started=T0 + MINUTE)),
    ]


def test_a_filter_keeps_statuses_a_saga_type_and_sagas_older_than_an_age() -> None:
    now = T0 + 60 * MINUTE
    keep = {
        SagaFilter(): {"o-new", "o-old", "o-bad", "l-1"},
        SagaFilter(frozenset({"running"})): {"o-new", "o-old"},
        SagaFilter(frozenset({"running", "compensated"})): {"o-new", "o-old", "o-bad"},
        SagaFilter(saga="loan"): {"l-1"},
        SagaFilter(frozenset({"running"}), older_than_ms=20 * MINUTE): {"o-old"},
        SagaFilter(frozenset({"running"}), older_than_ms=10 * MINUTE): {"o-old", "o-new"},
        SagaFilter(older_than_ms=50 * MINUTE): {"o-old", "o-bad", "l-1"},
    }
    for wanted, keys in keep.items():
        assert {s.key for s in summaries() if wanted.keeps(s, now)} == keys, wanted


def test_a_list_is_oldest_first_and_cut_at_the_limit() -> None:
    listing = oldest_first(summaries(), None, 17)
    assert [s.key for s in listing.sagas] == ["o-old", "l-1", "o-bad", "o-new"]
    assert (listing.matched, listing.scanned) == (4, 17)
    cut = oldest_first(summaries(), 2, 17)
    assert [s.key for s in cut.sagas] == ["o-old", "l-1"] and cut.matched == 4


def test_a_list_prints_a_line_per_saga_and_what_it_read() -> None:
    now = T0 + 2 * 24 * 60 * MINUTE + 61 * MINUTE
    lines = format_list(oldest_first(summaries(), 3, 40), now)
    assert lines[0].split() == ["saga", "key", "status", "started", "age", "failed"]
    assert lines[1].split() == [
        "order",
        "o-old",
        "running",
        "2025-11-24",
        "16:00:00.000",
        "UTC",
        "2d01h",
    ]
    bad = lines[3].split()
    assert bad[:3] == ["order", "o-bad", "compensated"]
    assert " ".join(bad[7:]) == "payment: card declined"  # the step is named once
    assert lines[-1] == "the oldest 3 of 4 sagas (read 40 changelog records)"
    assert format_list(oldest_first([], None, 0), now) == ["0 sagas (read 0 changelog records)"]


def test_ages_and_durations() -> None:
    assert [age(ms) for ms in (-5, 45_000, 723_000, 5 * 3_600_000 + 7 * MINUTE)] == [
        "0s",
        "45s",
        "12m03s",
        "5h07m",
    ]
    assert age(3 * 86_400_000 + 4 * 3_600_000) == "3d04h"
    assert [parse_duration(t) for t in ("500ms", "90s", "10m", "1.5h", "7d")] == [
        500,
        90_000,
        600_000,
        5_400_000,
        604_800_000,
    ]
    with pytest.raises(ValueError, match="give a number and a unit"):
        parse_duration("600")
