"""Consumer lag per group, topic and partition, read from librdkafka's own statistics.

A consumer built with `ConsumerLag.config()` emits its statistics every
`consumer_lag_interval_ms` (`statistics.interval.ms` + `stats_cb`): per assigned partition its
positions and the broker's watermarks, learned from the fetches it makes anyway. So the gauge
costs no admin call and nothing per poll.

The lag of a partition is what its consumer group still has to do there: the partition's end
(the last stable offset under read_committed) minus the next offset the consumer will be given,
plus the records it was given but has not finished (a handler's commands in flight or queued,
told by `unfinished`). Positions, not committed offsets, because the committed offset of a
transactional topic stops before the last commit marker and would never reach the end; and
librdkafka does not follow offsets committed inside the orchestrator's transactions. Before
anything was given, the committed offset counts, else the low watermark (offsets reset to the
earliest). A paused partition is not fetched, so its end is the one its last fetch saw.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Gauge

log = logging.getLogger(__name__)

# librdkafka's "no offset" (RD_KAFKA_OFFSET_INVALID) and other negative markers
INVALID = -1001


class ConsumerLag:
    """Feeds `sagastream_consumer_lag{group,topic,partition}` from one consumer's statistics."""

    def __init__(
        self,
        gauge: Gauge,
        group: str,
        topics: Iterable[str],
        *,
        interval_ms: int,
        unfinished: Callable[[str, int], int] | None = None,
    ) -> None:
        """`topics`: those reported (an orchestrator's changelog subscription is not lag);
        `unfinished(topic, partition)`: records given to the consumer but not done with."""
        self._gauge = gauge
        self._group = group
        self._topics = frozenset(topics)
        self._unfinished = unfinished
        self._interval_ms = interval_ms
        self._shown: set[tuple[str, str]] = set()

    def config(self) -> dict[str, Any]:
        """The consumer properties that make it report here; none when the interval is 0."""
        if not self._interval_ms:
            return {}
        return {"statistics.interval.ms": self._interval_ms, "stats_cb": self.statistics}

    def statistics(self, raw: str) -> None:
        """stats_cb: set the gauge of every assigned partition, drop those no longer assigned.
        Runs inside the consumer's poll, on the loop's own thread."""
        try:
            stats = json.loads(raw)
        except ValueError:
            log.warning("consumer %s: statistics are not JSON; lag not updated", self._group)
            return
        now = dict(self._lags(stats.get("topics") or {}))
        for topic_partition, lag in now.items():
            self._gauge.labels(self._group, *topic_partition).set(lag)
        for gone in self._shown - now.keys():
            self._gauge.remove(self._group, *gone)
        self._shown = set(now)

    def _lags(self, topics: Mapping[str, Any]) -> Iterable[tuple[tuple[str, str], int]]:
        for topic, info in topics.items():
            if topic not in self._topics:
                continue
            for partition, p in (info.get("partitions") or {}).items():
                lag = self.lag_of(p)
                if lag is None or int(partition) < 0:
                    continue
                if self._unfinished is not None:
                    lag += self._unfinished(topic, int(partition))
                yield (topic, partition), lag

    def lag_of(self, p: Mapping[str, Any]) -> int | None:
        """Records of one partition's statistics not given to the consumer yet, None while it
        is not assigned or its offsets are not known yet."""
        if not p.get("desired") or p.get("fetch_state") != "active":
            return None
        end = p.get("ls_offset", INVALID)
        if end < 0:
            end = p.get("hi_offset", INVALID)
        position = p.get("app_offset", INVALID)
        if position < 0:
            position = max(p.get("committed_offset", INVALID), p.get("lo_offset", INVALID))
        if end < 0 or position < 0:
            return None
        return max(0, end - position)
