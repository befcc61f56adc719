"""Consumer lag per worker role, for the console's overview: how many records each role's
consumer group (the orchestrator's, each handler role's) still has to read on its inputs.

Read from the broker now, not from a worker's own gauge (runtime/lag.py): the group's committed
offsets, the partitions' read_committed ends, so a role whose workers are all down shows too.

A partition's lag is its end minus the group's committed offset there (the low watermark where
nothing is committed: the workers start at the earliest record). The end of a topic written in
transactions sits past the last commit marker, and a group that read everything has committed
the marker's own offset, one short; aborted records are never given to it either. So a
partition that seems behind is read from its committed offset: if no committed record comes
before its end, its lag is 0. Otherwise the lag counts from the committed offset to the end,
the markers in between too: a bound, not a count of records.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from sagastream.core.topology import Topology
from sagastream.ops.acls import READONLY
from sagastream.ops.admin import admin_client
from sagastream.ops.replay import committed_offsets, role_topics
from sagastream.runtime import kafka_io
from sagastream.runtime.kafka_io import refused
from sagastream.runtime.settings import Settings
from sagastream.runtime.worker import ORCHESTRATOR

Partition = tuple[str, int]
# the longest the probe past commit markers reads; what it did not reach counts as behind
PROBE_S = 10.0
# the probe wants one record a partition, not a backlog (small fetches), and an end at once
PROBE_CONFIG = {"max.partition.fetch.bytes": 65_536, "fetch.wait.max.ms": 10}


@dataclass(frozen=True)
class PartitionOffsets:
    """One input partition of a group: its first offset and end (read_committed), the group's
    committed offset (None: nothing committed), and whether a committed record lies past it."""

    topic: str
    partition: int
    low: int
    high: int
    committed: int | None
    records_left: bool = True

    @property
    def start(self) -> int:
        """Where the group reads on from: its committed offset, else the first record."""
        return self.low if self.committed is None else max(self.committed, self.low)

    @property
    def lag(self) -> int:
        """Offsets from where the group reads on to the end; 0 when no record is left there."""
        return max(0, self.high - self.start) if self.records_left else 0


@dataclass(frozen=True)
class RoleLag:
    """One role's consumer group: its members, its lag summed over its input partitions (None:
    it never committed on them), and how many of those holding records it never committed on."""

    role: str
    group: str
    members: int
    lag: int | None
    partitions: int
    uncommitted: int
    problem: str | None = None

    def shown(self) -> str:
        """The lag as the overview says it: a number, or why there is none."""
        if self.problem is not None:
            return self.problem
        if self.lag is None:
            return "never committed" if self.members else "no members, never committed"
        if self.uncommitted:
            return (
                f"{self.lag} ({self.uncommitted} of {self.partitions} partitions never committed)"
            )
        return str(self.lag)


def role_lag(role: str, group: str, members: int, offsets: Iterable[PartitionOffsets]) -> RoleLag:
    """A role's lag from its input partitions' offsets; a group that committed on none of them
    has no lag to show (it may not exist), not a lag of 0."""
    found = list(offsets)
    never = all(o.committed is None for o in found)
    return RoleLag(
        role=role,
        group=group,
        members=members,
        lag=None if never else sum(o.lag for o in found),
        partitions=len(found),
        # an empty partition it never committed on is nothing to say
        uncommitted=sum(o.committed is None and o.high > o.low for o in found),
    )


def role_inputs(settings: Settings, topology: Topology) -> dict[str, list[str]]:
    """Each worker role and the physical topics its consumer group commits on."""
    roles = [ORCHESTRATOR, *sorted(topology.handlers)]
    # the orchestrator reads its inputs where SAGASTREAM_INPUT_PREFIX says (a shadow replay)
    physical = {ORCHESTRATOR: settings.input_topic}
    return {
        role: [physical.get(role, settings.topic)(t) for t in role_topics(topology, role)]
        for role in roles
    }


def read_role_lags(settings: Settings, topology: Topology) -> list[RoleLag]:
    """Every worker role's lag, read from the broker now."""
    inputs = role_inputs(settings, topology)
    groups = {role: settings.group(role) for role in inputs}
    admin = admin_client(settings)  # held: a collected client never resolves its futures
    described = admin.describe_consumer_groups(list(groups.values()), request_timeout=10)
    consumer = kafka_io.reader(settings, "console-lag", **PROBE_CONFIG)
    try:
        ends = input_ends(consumer, [t for topics in inputs.values() for t in topics])
        readings = {
            role: _read_group(
                settings,
                admin,
                groups[role],
                described[groups[role]],
                {tp: end for tp, end in ends.items() if tp[0] in topics},
            )
            for role, topics in inputs.items()
        }
        left = probe(consumer, {role: r.offsets for role, r in readings.items()})
    finally:
        consumer.close()
    return [_role_lag(role, groups[role], r, left[role]) for role, r in readings.items()]


@dataclass(frozen=True)
class GroupReading:
    """One group as read: its members and its input partitions' offsets, or why it could not
    be read."""

    members: int
    offsets: list[PartitionOffsets]
    problem: str | None = None


def _read_group(
    settings: Settings,
    admin: AdminClient,
    group: str,
    described: Future[Any],
    ends: Mapping[Partition, tuple[int, int]],
) -> GroupReading:
    try:
        members = len(described.result().members)
        committed = committed_offsets(admin, group, list(ends)) if ends else {}
    except KafkaException as exc:  # not allowed to describe the group, say: show why
        unread = [PartitionOffsets(*tp, *ends[tp], None) for tp in ends]
        return GroupReading(0, unread, unreadable(settings, group, exc.args[0]))
    return GroupReading(
        members, [PartitionOffsets(*tp, *ends[tp], committed.get(tp)) for tp in ends]
    )


def unreadable(settings: Settings, group: str, error: KafkaError) -> str:
    """Why a group's lag is not shown: a refusal names the principal and the ACLs to grant."""
    if error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return refused(settings, "DESCRIBE", f"group {group}", READONLY)
    return f"cannot read group {group}: {error.str()}"


def _role_lag(role: str, group: str, r: GroupReading, left: set[Partition]) -> RoleLag:
    if r.problem is not None:
        return RoleLag(role, group, 0, None, len(r.offsets), len(r.offsets), r.problem)
    offsets = [replace(o, records_left=(o.topic, o.partition) in left) for o in r.offsets]
    return role_lag(role, group, r.members, offsets)


def input_ends(consumer: Consumer, topics: Iterable[str]) -> dict[Partition, tuple[int, int]]:
    """Each partition's first offset and read_committed end, of the topics that exist (one not
    created yet has nothing to lag on)."""
    metadata = consumer.list_topics(timeout=kafka_io.WATERMARK_WAIT_S).topics
    return {
        (topic, p): kafka_io.watermarks(consumer, topic, p)
        for topic in dict.fromkeys(topics)
        if topic in metadata and metadata[topic].error is None
        for p in sorted(metadata[topic].partitions)
    }


def probe(
    consumer: Consumer, offsets: Mapping[str, list[PartitionOffsets]]
) -> dict[str, set[Partition]]:
    """For each group (by role), its partitions that seem behind and hold a committed record
    past its start. Read together, in one round unless two groups share a partition."""
    rounds: list[dict[str, dict[Partition, tuple[int, int]]]] = []
    for role, found in offsets.items():
        behind = {(o.topic, o.partition): (o.start, o.high) for o in found if o.high > o.start}
        room = next(
            (r for r in rounds if not any(behind.keys() & t.keys() for t in r.values())), None
        )
        if room is None:
            room = {}
            rounds.append(room)
        room[role] = behind
    left: dict[str, set[Partition]] = {role: set() for role in offsets}
    for chosen in rounds:
        seen = records_left(
            consumer, {tp: r for ranges in chosen.values() for tp, r in ranges.items()}
        )
        for role, ranges in chosen.items():
            left[role] = seen & ranges.keys()
    return left


def records_left(consumer: Consumer, ranges: Mapping[Partition, tuple[int, int]]) -> set[Partition]:
    """The partitions with a committed record in their range; if the read runs out of time,
    every one not seen yet counts as having one (the lag shown is then a bound)."""
    seen: set[Partition] = set()
    if not ranges:
        return seen
    try:
        for msg in kafka_io.read_ranges(consumer, ranges, time.monotonic() + PROBE_S):
            seen.add((msg.topic() or "", msg.partition() or 0))
            if len(seen) == len(ranges):
                break
    except TimeoutError:
        return set(ranges)
    return seen
