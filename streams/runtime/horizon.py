"""How far in time each store partition has read its inputs: the bound its timers fire below.

A timer is judged against what its partition has read, not against the wall clock alone: after
a restart, a restore, a wait for the registry or any lag, the results already on the topics may
be older than a timer that is due by the clock, and they must be decided before it (a payment
charged in time is not timed out because the orchestrator was down when it came).

Per input partition this keeps the next offset to decide and the timestamp of the last record
decided, or of the record held back for the registry. Store partition p may fire timers:
  * due by the clock, when every input's partition p is read to the end the consumer knows;
  * else only due before the earliest of: the held-back record's timestamp, the last decided
    record's timestamp of each input not read to its end; none while such an input has not
    decided a record yet in this assignment.
Pure bookkeeping: the consumer's positions and end offsets are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

Partition = tuple[str, int]
# the low and high watermark the consumer knows for an input partition, or None if unknown
Ends = Callable[[Partition], tuple[int, int] | None]


def timestamp(msg: Message) -> int | None:
    """A record's timestamp in ms, None if it has none."""
    kind, stamp = msg.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(stamp)


@dataclass
class _Read:
    next_offset: int | None = None  # the next offset to decide; None: where the consumer starts
    last_ts: int | None = None  # timestamp of the last record decided since assignment
    held_ts: int | None = None  # a record that waits (paused for the registry): its timestamp


class Horizon:
    """What each input partition has read, and the time up to which a partition's timers fire."""

    def __init__(self, topics: Sequence[str]) -> None:
        self.topics = list(topics)
        self._reads: dict[Partition, _Read] = {}

    def assigned(self, offsets: Iterable[tuple[str, int, int]]) -> None:
        """Partitions (re)assigned, reading from their committed offsets (< 0: none committed)."""
        for topic, partition, offset in offsets:
            self._reads[(topic, partition)] = _Read(offset if offset >= 0 else None)

    def dropped(self, partitions: set[int]) -> None:
        self._reads = {tp: r for tp, r in self._reads.items() if tp[1] not in partitions}

    def read(self, tp: Partition, offset: int, timestamp: int | None) -> None:
        """A record was decided (or dead-lettered): what it says of time is known."""
        read = self._reads.setdefault(tp, _Read())
        read.next_offset = offset + 1
        read.held_ts = None
        if timestamp is not None:
            read.last_ts = timestamp

    def held(self, tp: Partition, offset: int, timestamp: int | None) -> None:
        """A record waits (its partition is paused and rewound to it): time stops before it."""
        read = self._reads.setdefault(tp, _Read())
        read.next_offset = offset
        read.held_ts = timestamp if timestamp is not None else read.last_ts

    def rewound(self, offsets: Iterable[tuple[str, int, int]]) -> None:
        """Back to the committed offsets after an abort: what was read since is undone."""
        self.assigned(offsets)

    def until(
        self,
        partition: int,
        now: int,
        ends: Ends,
        positions: Mapping[Partition, int],
        assigned: Container[Partition],
    ) -> int | None:
        """The latest due time that store partition `partition` may fire now (None: none).

        `positions` are the consumer's positions (past control records) where it knows them;
        an input partition not `assigned` (a topic that does not exist) holds nothing back.
        """
        bound = now
        for topic in self.topics:
            tp = (topic, partition)
            if tp not in assigned:
                continue
            read = self._reads.get(tp, _Read())
            if read.held_ts is not None:
                bound = min(bound, read.held_ts - 1)
            elif not self._caught_up(tp, read, ends, positions):
                if read.last_ts is None:
                    return None  # nothing read yet: what is on the topic may be older than any
                bound = min(bound, read.last_ts - 1)
        return bound

    @staticmethod
    def _caught_up(
        tp: Partition, read: _Read, ends: Ends, positions: Mapping[Partition, int]
    ) -> bool:
        known = ends(tp)
        if known is None:
            return False
        low, high = known
        # with nothing committed, the consumer starts at the low watermark
        at = max(low, read.next_offset if read.next_offset is not None else low)
        return max(at, positions.get(tp, -1)) >= high
