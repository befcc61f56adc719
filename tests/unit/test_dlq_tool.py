"""The dead-letter tool without a broker: selection, header rewrite, refusal and grouping."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from sagastream.core.topology import load_topology
from sagastream.ops import cli
from sagastream.ops.dlq import (
    DeadLetter,
    Selection,
    dlq_topics,
    group,
    parse_time,
    plan_redrives,
    redrive_headers,
    redrive_sources,
    resolve_topic,
    select,
    show,
)
from sagastream.runtime.settings import Settings
from sagastream.wire.dlq import REDRIVE_COUNT, Origin, carried_headers, dead_letter_headers

T0 = 1_764_000_000_000  # 2025-11-24T16:00:00Z


# orders.events.dlq takes dead letters from p-orders.events, which carries OrderPlaced
SOURCES = {"orders.events.dlq": {"p-orders.events": frozenset({"OrderPlaced"})}}


def letter(
    offset: int,
    reason: str = "bad_magic",
    key: str | None = "k",
    failed_at: int | None = T0,
    redrives: int | None = None,
    topic: str = "orders.events.dlq",
    partition: int = 0,
    extra: list[tuple[str, bytes]] | None = None,
) -> DeadLetter:
    headers = dead_letter_headers(Origin("p-orders.events", partition, offset), reason, "x", "w")
    headers = [(k, v) for k, v in headers if k != "dlq.failed.at"]
    if failed_at is not None:
        headers.append(("dlq.failed.at", str(failed_at).encode()))
    if redrives is not None:
        headers.append((REDRIVE_COUNT, str(redrives).encode()))
    headers += extra or []
    return DeadLetter(
        topic, partition, offset, None if key is None else key.encode(), b"v", headers
    )


def offsets(letters: list[DeadLetter]) -> list[int]:
    return [x.offset for x in letters]


def test_selection_by_reason_offsets_and_key() -> None:
    letters = [
        letter(0),
        letter(1, "empty"),
        letter(2, key="other"),
        letter(3),
        letter(4, key=None),
    ]
    assert offsets(select(letters, Selection())) == [0, 1, 2, 3, 4]
    assert offsets(select(letters, Selection(reason="empty"))) == [1]
    assert offsets(select(letters, Selection(from_offset=1, to_offset=3))) == [1, 2, 3]
    assert offsets(select(letters, Selection(from_offset=3))) == [3, 4]
    assert offsets(select(letters, Selection(key="other"))) == [2]
    assert offsets(select(letters, Selection(reason="bad_magic", key="k", to_offset=2))) == [0]


def test_selection_by_partition_and_topic() -> None:
    letters = [
        letter(5, partition=1),
        letter(5, partition=2),
        letter(5, topic="payments.events.dlq"),
    ]
    assert len(select(letters, Selection(partition=1))) == 1
    assert [x.topic for x in select(letters, Selection(topic="payments.events.dlq"))] == [
        "payments.events.dlq"
    ]


def test_selection_by_time_since_inclusive_until_exclusive() -> None:
    letters = [letter(0, failed_at=T0), letter(1, failed_at=T0 + 1000), letter(2, failed_at=None)]
    assert offsets(select(letters, Selection(since_ms=T0 + 1000))) == [1]
    assert offsets(select(letters, Selection(until_ms=T0 + 1000))) == [0]
    assert offsets(select(letters, Selection(since_ms=T0, until_ms=T0 + 1001))) == [0, 1]


def test_parse_time_takes_iso_or_epoch_ms() -> None:
    assert parse_time(str(T0)) == T0
    assert parse_time("2025-11-24T16:00:00Z") == T0
    assert parse_time("2025-11-24T16:00:00") == T0  # UTC unless it says
    assert parse_time("2025-11-24T17:00:00+01:00") == T0
    with pytest.raises(ValueError, match="epoch milliseconds or ISO 8601"):
        parse_time("yesterday")


def test_redrive_headers_drop_dlq_headers_and_count_up() -> None:
    dead = letter(0, redrives=1, extra=[("trace", b"abc")])
    assert redrive_headers(dead.headers, dead.redrive_count + 1) == [
        ("trace", b"abc"),
        (REDRIVE_COUNT, b"2"),
    ]


def test_plan_redrives_targets_the_source_topic_and_refuses_past_the_limit() -> None:
    fresh, twice, spent = letter(0), letter(1, redrives=2), letter(2, redrives=3)
    plans = plan_redrives([fresh, twice, spent], max_redrives=3, sources=SOURCES)
    assert [p.target for p in plans] == ["p-orders.events"] * 3
    assert plans[0].refused is None and plans[0].headers == [(REDRIVE_COUNT, b"1")]
    assert plans[1].refused is None and plans[1].headers == [(REDRIVE_COUNT, b"3")]
    assert plans[2].refused is not None and "redriven 3 times" in plans[2].refused
    assert plans[2].headers == []
    assert plan_redrives([fresh], max_redrives=0, sources=SOURCES)[0].refused


def test_a_dead_letter_cut_to_fit_is_refused_and_says_where_the_whole_record_is() -> None:
    cut = letter(7, extra=[("dlq.original.size", b"999800"), ("dlq.truncated", b"value")])
    [plan] = plan_redrives([cut], 3, SOURCES)
    assert plan.refused == (
        "its value was cut to fit the DLQ (originally 999800 bytes); the whole record is at "
        "p-orders.events[0]@7"
    )


def test_a_dead_letter_without_a_source_topic_is_refused() -> None:
    orphan = DeadLetter("orders.events.dlq", 0, 0, b"k", b"v", [("dlq.reason", b"empty")])
    assert plan_redrives([orphan], 3, SOURCES)[0].refused == "no dlq.original.topic header"


def test_group_counts_and_first_and_last_time_per_topic_and_reason() -> None:
    letters = [
        letter(0, failed_at=T0 + 5),
        letter(1, failed_at=T0),
        letter(2, "empty", failed_at=None),
        letter(0, topic="payments.commands.dlq", failed_at=T0 + 9),
    ]
    rows = [(g.topic, g.reason, g.count, g.first_ms, g.last_ms) for g in group(letters)]
    assert rows == [
        ("orders.events.dlq", "bad_magic", 2, T0, T0 + 5),
        ("orders.events.dlq", "empty", 1, None, None),
        ("payments.commands.dlq", "bad_magic", 1, T0 + 9, T0 + 9),
    ]


def test_the_runtime_carries_the_redrive_count_into_the_next_dead_letter() -> None:
    consumed = [("event_type", b"OrderPlaced"), (REDRIVE_COUNT, b"2")]
    assert carried_headers(consumed) == [(REDRIVE_COUNT, b"2")]
    assert carried_headers({REDRIVE_COUNT: "1"}) == [(REDRIVE_COUNT, b"1")]
    assert carried_headers(None) == []


def test_topics_resolve_from_either_name() -> None:
    topology = load_topology(Settings().topology_file, Settings().schemas_path)
    assert "orders.events.dlq" in dlq_topics(topology)
    assert resolve_topic(topology, "orders.events") == "orders.events.dlq"
    assert resolve_topic(topology, "orders.events.dlq") == "orders.events.dlq"
    with pytest.raises(ValueError, match="neither a topic nor a dead-letter topic"):
        resolve_topic(topology, "nope")


def test_show_is_json_with_every_header_and_raw_bytes_when_undecodable() -> None:
    shown = json.loads(show(letter(7, redrives=1)))
    assert shown["offset"] == 7 and shown["reason"] == "bad_magic" and shown["redrive_count"] == 1
    assert [REDRIVE_COUNT, "1"] in shown["headers"]
    assert shown["record"] is None and shown["value_base64"] == "dg=="


def test_cli_redrive_parses_its_options() -> None:
    args = cli.parser().parse_args(
        ["dlq", "redrive", "--reason", "empty", "--from-offset", "1", "--to-offset", "2"]
    )
    assert (args.action, args.reason, args.from_offset, args.to_offset) == (
        "redrive",
        "empty",
        1,
        2,
    )
    assert args.max_redrives == 3 and not args.execute


def test_a_dead_letter_naming_a_foreign_source_is_refused() -> None:
    """Whoever may write a DLQ may set its headers: a "review approved" signal planted in
    orders.events.dlq, naming sagas.signals as its source, must not reach sagas.signals."""
    planted = letter(3)
    planted = replace(
        planted,
        headers=[
            (k, b"p-sagas.signals" if k == "dlq.original.topic" else v) for k, v in planted.headers
        ],
    )
    [plan] = plan_redrives([planted], 3, SOURCES)
    assert plan.target is None
    assert plan.refused == (
        "its dlq.original.topic header names p-sagas.signals, but orders.events.dlq takes dead "
        "letters from p-orders.events only: not redriven there (anyone who may write "
        "orders.events.dlq can set that header)"
    )


def test_a_dead_letter_of_a_type_its_source_does_not_carry_is_refused() -> None:
    signal = replace(letter(4), event_type="StepSignal")
    [plan] = plan_redrives([signal], 3, SOURCES)
    assert plan.refused == (
        "it is a StepSignal, which p-orders.events does not carry by the topology: not redriven"
    )
    [ok] = plan_redrives([replace(letter(5), event_type="OrderPlaced")], 3, SOURCES)
    assert ok.refused is None and ok.target == "p-orders.events"


def test_redrive_sources_follow_the_topology() -> None:
    topology = load_topology(Settings().topology_file, Settings().schemas_path)
    sources = redrive_sources(topology, Settings(topic_prefix="p-"))
    assert sources["payments.commands.dlq"] == {
        "p-payments.commands": frozenset({"ChargePayment", "RefundPayment"})
    }
    assert "StepSignal" in sources["sagas.signals.dlq"]["p-sagas.signals"]
    assert "StepSignal" not in sources["payments.commands.dlq"]["p-payments.commands"]
