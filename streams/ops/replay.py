"""`sagastream replay reset`: plan and apply a move of a consumer group's committed offsets.

The plan is a pure function of the group's committed offsets, the partitions' watermarks and
the target; reading those from the broker and committing the result are kept apart from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions
from confluent_kafka import TopicPartition as KafkaTopicPartition
from confluent_kafka.admin import AdminClient

from sagastream.core.topology import Topology
from sagastream.errors import ClusterError, UsageError
from sagastream.ops.admin import admin_client
from sagastream.ops.times import parse_time as parse_time
from sagastream.runtime import kafka_io
from sagastream.runtime.settings import Settings

TopicPartition = tuple[str, int]
TargetKind = Literal["beginning", "end", "offset", "time"]


@dataclass(frozen=True)
class Target:
    """Where to move the group: the beginning or end, an offset, or a time (epoch ms)."""

    kind: TargetKind
    value: int | None = None

    def describe(self) -> str:
        if self.kind == "offset":
            return f"offset {self.value}"
        if self.kind == "time":
            stamp = datetime.fromtimestamp((self.value or 0) / 1000, UTC)
            return f"time {stamp.isoformat(timespec='milliseconds')} ({self.value} ms)"
        return self.kind


@dataclass(frozen=True)
class PlanRow:
    """One partition's move: from the committed offset (None: nothing committed) to `new`."""

    topic: str
    partition: int
    current: int | None
    new: int
    low: int
    high: int

    @property
    def reprocess(self) -> int:
        """Messages read again (negative: skipped); with nothing committed the group would start
        at the low watermark (auto.offset.reset=earliest)."""
        start = self.low if self.current is None else self.current
        return start - self.new


def plan_rows(
    current: Mapping[TopicPartition, int | None],
    watermarks: Mapping[TopicPartition, tuple[int, int]],
    target: Target,
    times: Mapping[TopicPartition, int] | None = None,
) -> list[PlanRow]:
    """The new offset of every partition of `watermarks`, sorted by topic and partition.

    `times` holds offsets_for_times' answers for a time target (-1: no message that late, so the
    end). An offset target outside [low, high] is clamped to it, as kafka-consumer-groups does.
    """
    rows = []
    for tp in sorted(watermarks):
        low, high = watermarks[tp]
        if target.kind == "beginning":
            new = low
        elif target.kind == "end":
            new = high
        elif target.kind == "offset":
            new = min(max(int(target.value or 0), low), high)
        else:
            if times is None or tp not in times:
                raise UsageError(f"no offset for time resolved for {tp[0]}[{tp[1]}]")
            found = times[tp]
            new = high if found < 0 else min(max(found, low), high)
        rows.append(PlanRow(tp[0], tp[1], current.get(tp), new, low, high))
    return rows


def format_plan(group: str, target: Target, rows: list[PlanRow]) -> list[str]:
    """The plan as a table with a total line."""
    header = ("topic", "partition", "current", "new", "reprocess")
    table = [
        (
            r.topic,
            str(r.partition),
            "none" if r.current is None else str(r.current),
            str(r.new),
            f"{r.reprocess}" if r.reprocess >= 0 else f"{r.reprocess} (skips forward)",
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [header, *table]) for i in range(len(header))]
    lines = [f"group {group}: reset to {target.describe()}"]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, *table]
    ]
    total = sum(r.reprocess for r in rows)
    skipped = -sum(r.reprocess for r in rows if r.reprocess < 0)
    line = f"total: {total} messages to reprocess on {len(rows)} partitions"
    if skipped:
        line += f" ({skipped} skipped forward, never processed)"
    lines.append(line)
    return lines


def role_topics(
    topology: Topology, role: str, topic: str | None = None, saga: str | None = None
) -> list[str]:
    """The logical topics whose offsets to move: one topic, a saga's inputs, or all the role's."""
    if role == "orchestrator":
        consumed = topology.orchestrator_inputs()
    elif role in topology.handlers:
        consumed = [topology.handlers[role].consumes]
    else:
        raise UsageError(
            f"unknown role {role!r}: use orchestrator or a handler of topology.yaml "
            f"({', '.join(sorted(topology.handlers))})"
        )
    if saga is not None:
        if role != "orchestrator":
            raise UsageError("--saga applies to --group orchestrator only")
        if saga not in topology.sagas:
            raise UsageError(
                f"unknown saga {saga!r}: topology.yaml has {', '.join(topology.sagas)}"
            )
        mine = set(topology.saga_topics(saga))
        consumed = [t for t in consumed if t in mine]
    if topic is not None:
        if topic not in consumed:
            raise UsageError(f"{role} does not consume {topic}; it consumes {', '.join(consumed)}")
        consumed = [topic]
    return consumed


def read_offsets(
    settings: Settings, group: str, topics: list[str], partition: int | None, target: Target
) -> tuple[
    dict[TopicPartition, int | None],
    dict[TopicPartition, tuple[int, int]],
    dict[TopicPartition, int],
]:
    """The group's committed offsets, the read_committed watermarks and (for a time target) the
    offsets of that time, of the physical topics' partitions (one partition if given)."""
    consumer = kafka_io.reader(settings, "sagastream-replay")
    try:
        metadata = consumer.list_topics(timeout=10)
        tps: list[TopicPartition] = []
        for name in topics:
            if name not in metadata.topics or not metadata.topics[name].partitions:
                raise UsageError(f"topic {name} does not exist (`sagastream topics create`)")
            parts = sorted(metadata.topics[name].partitions)
            if partition is not None:
                if partition not in parts:
                    raise UsageError(f"topic {name} has no partition {partition} (0-{parts[-1]})")
                parts = [partition]
            tps += [(name, p) for p in parts]
        ends = {tp: kafka_io.watermarks(consumer, *tp) for tp in tps}
        times: dict[TopicPartition, int] = {}
        if target.kind == "time":
            asked = [KafkaTopicPartition(t, p, int(target.value or 0)) for t, p in tps]
            for found in consumer.offsets_for_times(asked, timeout=10):
                times[(found.topic, found.partition)] = found.offset
    finally:
        consumer.close()
    return committed_offsets(admin_client(settings), group, tps), ends, times


def committed_offsets(
    admin: AdminClient, group: str, tps: list[TopicPartition]
) -> dict[TopicPartition, int | None]:
    """The group's committed offset of each partition (None: nothing committed there, or no
    such group). `admin` is held by the caller: a collected client never resolves its futures."""
    request = ConsumerGroupTopicPartitions(group, [KafkaTopicPartition(t, p) for t, p in tps])
    future = admin.list_consumer_group_offsets([request], request_timeout=10)[group]
    return {
        (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
        for tp in future.result().topic_partitions
    }


def commit_plan(settings: Settings, group: str, rows: list[PlanRow]) -> None:
    """Commit the plan's offsets for the group; refused while the group has members."""
    admin = admin_client(settings)  # held: a collected client never resolves its futures
    state = admin.describe_consumer_groups([group], request_timeout=10)[group].result().state
    if state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        raise ClusterError(
            f"group {group} is {state.name}, with active members: stop its workers first"
        )
    offsets = [KafkaTopicPartition(r.topic, r.partition, r.new) for r in rows]
    request = ConsumerGroupTopicPartitions(group, offsets)
    result = admin.alter_consumer_group_offsets([request], request_timeout=10)[group].result()
    failed = [tp for tp in result.topic_partitions if tp.error is not None]
    if failed:
        raise ClusterError(
            "offsets not committed for "
            + ", ".join(f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in failed)
        )


def idempotency_note(role: str) -> str:
    if role == "orchestrator":
        return (
            "reprocessing is safe: the orchestrator drops events a saga has already applied "
            "(dedup by event id, the last 64 per saga)"
        )
    return (
        f"reprocessing is safe: {role} performs each command once per idempotency key; "
        "a repeat gets the first answer again, not a second effect"
    )
