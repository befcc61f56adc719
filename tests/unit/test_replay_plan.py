"""The replay plan: committed offsets, watermarks and a target in, one row per partition out."""

from __future__ import annotations

import pytest

from sagastream.core.topology import load_topology
from sagastream.ops.replay import Target, format_plan, parse_time, plan_rows, role_topics
from sagastream.runtime.settings import Settings

WATERMARKS = {("orders", 0): (0, 10), ("orders", 1): (4, 8), ("results", 0): (0, 0)}
CURRENT: dict[tuple[str, int], int | None] = {("orders", 0): 10, ("orders", 1): 6}


def moves(target: Target, times: dict[tuple[str, int], int] | None = None) -> list[tuple]:
    return [
        (r.topic, r.partition, r.current, r.new, r.reprocess)
        for r in plan_rows(CURRENT, WATERMARKS, target, times)
    ]


def test_to_beginning_rereads_from_the_low_watermark() -> None:
    assert moves(Target("beginning")) == [
        ("orders", 0, 10, 0, 10),
        ("orders", 1, 6, 4, 2),
        ("results", 0, None, 0, 0),
    ]


def test_to_end_skips_forward() -> None:
    assert moves(Target("end")) == [
        ("orders", 0, 10, 10, 0),
        ("orders", 1, 6, 8, -2),
        ("results", 0, None, 0, 0),
    ]


def test_an_offset_outside_the_log_is_clamped_to_it() -> None:
    assert moves(Target("offset", 5)) == [
        ("orders", 0, 10, 5, 5),
        ("orders", 1, 6, 5, 1),
        ("results", 0, None, 0, 0),
    ]
    assert [r[3] for r in moves(Target("offset", 1))] == [1, 4, 0]
    assert [r[3] for r in moves(Target("offset", 99))] == [10, 8, 0]


def test_a_time_later_than_every_message_means_the_end() -> None:
    times = {("orders", 0): 3, ("orders", 1): -1, ("results", 0): -1}
    assert moves(Target("time", 1_700_000_000_000), times) == [
        ("orders", 0, 10, 3, 7),
        ("orders", 1, 6, 8, -2),
        ("results", 0, None, 0, 0),
    ]


def test_a_time_target_needs_resolved_offsets() -> None:
    with pytest.raises(ValueError, match="no offset for time"):
        plan_rows(CURRENT, WATERMARKS, Target("time", 1))


def test_the_table_shows_none_skips_and_a_total() -> None:
    lines = format_plan("g", Target("end"), plan_rows(CURRENT, WATERMARKS, Target("end")))
    assert lines[0] == "group g: reset to end"
    assert lines[1].split() == ["topic", "partition", "current", "new", "reprocess"]
    assert lines[2].split() == ["orders", "0", "10", "10", "0"]
    assert lines[3].split() == ["orders", "1", "6", "8", "-2", "(skips", "forward)"]
    assert lines[4].split() == ["results", "0", "none", "0", "0"]
    assert lines[5] == (
        "total: -2 messages to reprocess on 3 partitions (2 skipped forward, never processed)"
    )


def test_times_parse_as_epoch_ms_or_iso() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000_000
    with pytest.raises(ValueError, match="neither epoch milliseconds nor an ISO 8601"):
        parse_time("yesterday")


def test_topics_by_role_saga_and_topic() -> None:
    topology = load_topology(Settings().topology_file, Settings().schemas_path)
    inputs = topology.orchestrator_inputs()
    assert role_topics(topology, "orchestrator") == inputs
    order = role_topics(topology, "orchestrator", saga="order")
    assert order and set(order) <= set(inputs) and set(order) <= set(topology.saga_topics("order"))
    payment = topology.handlers["payment"].consumes
    assert role_topics(topology, "payment") == [payment]
    assert role_topics(topology, "payment", topic=payment) == [payment]
    with pytest.raises(ValueError, match="does not consume"):
        role_topics(topology, "payment", topic=inputs[0])
    with pytest.raises(ValueError, match="orchestrator only"):
        role_topics(topology, "payment", saga="order")
    with pytest.raises(ValueError, match="unknown role"):
        role_topics(topology, "nobody")
    with pytest.raises(ValueError, match="unknown saga"):
        role_topics(topology, "orchestrator", saga="nothing")
