"""Consumer lag from librdkafka statistics (sagastream.runtime.lag): positions, watermarks,
commit markers, unfinished records, and partitions that leave the assignment."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry

from sagastream.runtime.lag import INVALID, ConsumerLag
from sagastream.runtime.metrics import Metrics


def part(**offsets: Any) -> dict[str, Any]:
    base = {
        "desired": True,
        "fetch_state": "active",
        "ls_offset": INVALID,
        "hi_offset": INVALID,
        "lo_offset": INVALID,
        "app_offset": INVALID,
        "committed_offset": INVALID,
    }
    return {**base, **offsets}


def stats(topic: str, partitions: dict[str, dict[str, Any]]) -> str:
    return json.dumps({"topics": {topic: {"partitions": partitions}}})


def lag(registry: CollectorRegistry, partition: str, topic: str = "t") -> float | None:
    labels = {"group": "g", "topic": topic, "partition": partition}
    return registry.get_sample_value("sagastream_consumer_lag", labels)


def tracker(unfinished: Any = None, topics: tuple[str, ...] = ("t",)) -> tuple[Any, ConsumerLag]:
    metrics = Metrics.create("test")
    got = ConsumerLag(metrics.consumer_lag, "g", topics, interval_ms=1000, unfinished=unfinished)
    return metrics.registry, got


def test_lag_is_the_last_stable_offset_minus_the_position() -> None:
    registry, got = tracker()
    got.statistics(stats("t", {"0": part(ls_offset=10, hi_offset=12, app_offset=4, lo_offset=0)}))
    assert lag(registry, "0") == 6


def test_before_anything_is_given_the_committed_offset_then_the_low_watermark_count() -> None:
    registry, got = tracker()
    got.statistics(
        stats(
            "t",
            {
                "0": part(ls_offset=10, committed_offset=7, lo_offset=0),
                "1": part(ls_offset=5, lo_offset=2),
            },
        )
    )
    assert (lag(registry, "0"), lag(registry, "1")) == (3, 3)


def test_records_given_but_unfinished_are_lag_and_a_read_partition_is_zero() -> None:
    # a transactional topic: the end counts commit markers, the position is past them
    unfinished = {("t", 0): 2, ("t", 1): 0}
    registry, got = tracker(lambda t, p: unfinished[(t, p)])
    got.statistics(
        stats(
            "t",
            {
                "0": part(ls_offset=8, app_offset=8, committed_offset=5, lo_offset=0),
                "1": part(ls_offset=4, app_offset=4, committed_offset=3, lo_offset=0),
            },
        )
    )
    assert (lag(registry, "0"), lag(registry, "1")) == (2, 0)


def test_unassigned_unknown_and_unreported_partitions_show_no_lag() -> None:
    registry, got = tracker()
    got.statistics(
        json.dumps(
            {
                "topics": {
                    "t": {
                        "partitions": {
                            "-1": part(ls_offset=1, lo_offset=0),
                            "0": part(desired=False, ls_offset=9, lo_offset=0),
                            "1": part(fetch_state="offset-query", ls_offset=9, lo_offset=0),
                            "2": part(),
                        }
                    },
                    "changelog": {"partitions": {"0": part(ls_offset=9, lo_offset=0)}},
                }
            }
        )
    )
    assert [lag(registry, p) for p in ("-1", "0", "1", "2")] == [None] * 4
    assert lag(registry, "0", topic="changelog") is None


def test_a_partition_that_leaves_the_assignment_leaves_the_gauge() -> None:
    registry, got = tracker()
    got.statistics(
        stats("t", {"0": part(ls_offset=3, lo_offset=0), "1": part(ls_offset=2, lo_offset=0)})
    )
    got.statistics(stats("t", {"1": part(ls_offset=2, app_offset=1)}))
    assert (lag(registry, "0"), lag(registry, "1")) == (None, 1)


def test_no_interval_means_no_statistics() -> None:
    _, got = tracker()
    off = ConsumerLag(Metrics.create("x").consumer_lag, "g", ["t"], interval_ms=0)
    assert off.config() == {}
    assert got.config()["statistics.interval.ms"] == 1000
