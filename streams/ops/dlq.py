"""The operator's dead-letter tool: list, show and redrive the dead letters of topology.yaml.

Selection, header rewriting, refusal and grouping are plain functions of `DeadLetter`s; only
`read_dead_letters` and `execute` talk to Kafka, through an `EventClient`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sagastream.core.topology import Topology
from sagastream.errors import UsageError
from sagastream.ops.client import EventClient, Received
from sagastream.ops.terminal import printable
from sagastream.ops.times import parse_time as parse_time
from sagastream.runtime.inputs import logical_topic
from sagastream.runtime.kafka_io import Delivery
from sagastream.runtime.settings import Settings
from sagastream.wire.dlq import HEADER_PREFIX, REDRIVE_COUNT, read_dead_letter_headers

DEFAULT_MAX_REDRIVES = 3


@dataclass(frozen=True)
class DeadLetter:
    """One record of a dead-letter topic; `topic` is its logical name (e.g. orders.events.dlq)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    event_type: str | None = None
    record: dict[str, Any] | None = None

    @property
    def dlq(self) -> dict[str, str]:
        return read_dead_letter_headers(self.headers)

    @property
    def reason(self) -> str:
        return self.dlq.get("reason") or "unknown"

    @property
    def failed_at_ms(self) -> int | None:
        return _int_or_none(self.dlq.get("failed.at"))

    @property
    def source_topic(self) -> str | None:
        """The physical topic the message was dead-lettered from."""
        return self.dlq.get("original.topic") or None

    @property
    def redrive_count(self) -> int:
        return _int_or_none(self.dlq.get(REDRIVE_COUNT[len(HEADER_PREFIX) :])) or 0

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def from_received(received: Received, topic: str) -> DeadLetter:
    """A consumed dead letter, named by its logical dlq topic."""
    return DeadLetter(
        topic,
        received.partition,
        received.offset,
        received.key,
        received.value,
        received.headers,
        received.event_type,
        received.record,
    )


def dlq_topics(topology: Topology) -> list[str]:
    """Every dead-letter topic of the topology, in topology order."""
    return list(dict.fromkeys(topology.dlq(t.name) for t in topology.topics))


def resolve_topic(topology: Topology, name: str) -> str:
    """The dlq topic meant by `name`: a dlq topic itself, or the topic it dead-letters."""
    if name in topology.topic_map:
        return topology.dlq(name)
    known = dlq_topics(topology)
    if name in known:
        return name
    raise UsageError(
        f"{name} is neither a topic nor a dead-letter topic of topology.yaml; "
        f"dead-letter topics: {', '.join(known)}"
    )


def format_time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


@dataclass(frozen=True)
class Selection:
    """Which dead letters to act on; unset fields select everything.

    Offsets are inclusive; `since_ms` is inclusive and `until_ms` exclusive, both against
    the dlq.failed.at header (a dead letter without one matches no time bound).
    """

    topic: str | None = None
    reason: str | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    key: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    # exactly these dead letters, each (logical dlq topic, partition, offset): the console's
    # ticked rows
    at: frozenset[tuple[str, int, int]] | None = None

    def matches(self, letter: DeadLetter) -> bool:
        failed_at = letter.failed_at_ms
        timed = self.since_ms is not None or self.until_ms is not None
        return not (
            (self.topic is not None and letter.topic != self.topic)
            or (self.reason is not None and letter.reason != self.reason)
            or (self.partition is not None and letter.partition != self.partition)
            or (self.from_offset is not None and letter.offset < self.from_offset)
            or (self.to_offset is not None and letter.offset > self.to_offset)
            or (self.key is not None and letter.key != self.key.encode())
            or (timed and failed_at is None)
            or (self.since_ms is not None and failed_at is not None and failed_at < self.since_ms)
            or (self.until_ms is not None and failed_at is not None and failed_at >= self.until_ms)
            or (
                self.at is not None
                and (letter.topic, letter.partition, letter.offset) not in self.at
            )
        )


def select(letters: Iterable[DeadLetter], selection: Selection) -> list[DeadLetter]:
    return [letter for letter in letters if selection.matches(letter)]


@dataclass(frozen=True)
class Group:
    """The dead letters of one topic with one reason."""

    topic: str
    reason: str
    count: int
    first_ms: int | None
    last_ms: int | None


def group(letters: Iterable[DeadLetter]) -> list[Group]:
    """Dead letters by (topic, reason), sorted so, with counts and first and last failure times."""
    buckets: dict[tuple[str, str], list[DeadLetter]] = {}
    for letter in letters:
        buckets.setdefault((letter.topic, letter.reason), []).append(letter)
    out = []
    for (topic, reason), members in sorted(buckets.items()):
        times = [t for t in (m.failed_at_ms for m in members) if t is not None]
        out.append(
            Group(topic, reason, len(members), min(times, default=None), max(times, default=None))
        )
    return out


def redrive_headers(headers: list[tuple[str, bytes]], count: int) -> list[tuple[str, bytes]]:
    """The headers of a redriven message: the dead letter's minus dlq.*, plus the new count."""
    kept = [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)]
    return [*kept, (REDRIVE_COUNT, str(count).encode())]


@dataclass(frozen=True)
class Redrive:
    """What redrive does with one dead letter: publish to `target`, or refuse and say why."""

    letter: DeadLetter
    target: str | None
    headers: list[tuple[str, bytes]]
    refused: str | None = None


# dead-letter topic (logical) -> each physical topic it takes dead letters from -> the event
# types that travel on that topic
Sources = Mapping[str, Mapping[str, frozenset[str]]]


def redrive_sources(topology: Topology, settings: Settings) -> dict[str, dict[str, frozenset[str]]]:
    """Where each dead-letter topic's records may go back to, by the topology alone: the topics
    whose DLQ it is, each with the event types it carries. A redrive trusts no header beyond
    that: whoever may write a DLQ could name any topic in `dlq.original.topic`."""
    out: dict[str, dict[str, frozenset[str]]] = {}
    for topic in topology.topics:
        types = frozenset(
            name for name, spec in topology.events.items() if topic.name in spec.all_topics
        )
        out.setdefault(topology.dlq(topic.name), {})[settings.topic(topic.name)] = types
    return out


def plan_redrives(
    letters: Iterable[DeadLetter], max_redrives: int, sources: Sources
) -> list[Redrive]:
    """A redrive per dead letter; past `max_redrives`, without a source topic, naming a source
    its DLQ does not take dead letters from (or an event type that topic does not carry), or cut
    to fit its DLQ (`dlq.truncated`), it is refused."""
    plans = []
    for letter in letters:
        count = letter.redrive_count
        if count >= max_redrives:
            why = f"redriven {count} times already (--max-redrives {max_redrives})"
            plans.append(Redrive(letter, letter.source_topic, [], why))
        elif letter.source_topic is None:
            plans.append(Redrive(letter, None, [], "no dlq.original.topic header"))
        elif (foreign := _foreign(letter, letter.source_topic, sources)) is not None:
            plans.append(Redrive(letter, None, [], foreign))
        elif (cut := letter.dlq.get("truncated")) is not None:
            plans.append(Redrive(letter, letter.source_topic, [], _truncated(letter, cut)))
        else:
            plans.append(
                Redrive(letter, letter.source_topic, redrive_headers(letter.headers, count + 1))
            )
    return plans


def plan_selected(
    letters: Iterable[DeadLetter],
    selection: Selection,
    topology: Topology,
    settings: Settings,
    max_redrives: int = DEFAULT_MAX_REDRIVES,
) -> list[Redrive]:
    """`dlq redrive`'s plan, for the CLI and the console alike: the selected dead letters, each
    to go back where the topology allows or refused with the reason."""
    return plan_redrives(
        select(letters, selection), max_redrives, redrive_sources(topology, settings)
    )


def _foreign(letter: DeadLetter, source: str, sources: Sources) -> str | None:
    """Why a dead letter may not go back where its header says, or None."""
    allowed = sources.get(letter.topic, {})
    if source not in allowed:
        takes = ", ".join(sorted(allowed)) or "no topic of the topology"
        return (
            f"its dlq.original.topic header names {printable(source)}, but {letter.topic} takes "
            f"dead letters from {takes} only: not redriven there (anyone who may write "
            f"{letter.topic} can set that header)"
        )
    if letter.event_type is not None and letter.event_type not in allowed[source]:
        return (
            f"it is a {letter.event_type}, which {source} does not carry by the topology: not "
            "redriven"
        )
    return None


def _truncated(letter: DeadLetter, cut: str) -> str:
    dlq = letter.dlq
    return (
        f"its {cut} was cut to fit the DLQ (originally {dlq.get('original.size')} bytes); the "
        f"whole record is at {letter.source_topic}[{dlq.get('original.partition')}]"
        f"@{dlq.get('original.offset')}"
    )


def describe(plan: Redrive, delivery: Delivery | None = None) -> str:
    """One line per dead letter: refused, would redrive (a dry run, no `delivery`), or the
    broker's answer to its redrive."""
    letter = plan.letter
    head = f"{letter.where} reason={printable(letter.reason)} redrives={letter.redrive_count}"
    if plan.refused:
        return f"refused {head}: {plan.refused}"
    how = f"as redrive {letter.redrive_count + 1}"
    if delivery is None:
        return f"would redrive {head} -> {plan.target} {how}"
    if delivery.error is not None:
        return f"NOT redriven {head} -> {plan.target}: {delivery.error}"
    return f"redriven {head} -> {delivery} {how}"


def group_table(groups: list[Group]) -> list[str]:
    """`dlq list` output: a row per (topic, reason)."""
    rows = [("TOPIC", "REASON", "COUNT", "FIRST", "LAST")] + [
        (
            g.topic,
            printable(g.reason),
            str(g.count),
            format_time(g.first_ms),
            format_time(g.last_ms),
        )
        for g in groups
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


def show(letter: DeadLetter) -> str:
    """`dlq show` output: the dead letter as pretty-printed JSON, decoded where possible."""
    body: dict[str, Any] = {
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "key": _text(letter.key),
        "reason": letter.reason,
        "failed_at": format_time(letter.failed_at_ms),
        "redrive_count": letter.redrive_count,
        "event_type": letter.event_type,
        "record": letter.record,
        "headers": [[k, _text(v)] for k, v in letter.headers],
    }
    if letter.record is None:
        # undecodable: the raw bytes, so the operator can see what was sent
        body["value_base64"] = (
            None if letter.value is None else base64.b64encode(letter.value).decode()
        )
    return json.dumps(body, indent=2, default=str)


def read_dead_letters(client: EventClient, topics: list[str]) -> list[DeadLetter]:
    """Every committed dead letter of the logical dlq topics, read to their end now."""
    physical = [client.settings.topic(t) for t in topics]
    return [
        from_received(m, logical_topic(client.settings, m.topic))
        for m in client.read_to_end(physical)
    ]


def parse_at(text: str) -> tuple[str, int, int]:
    """A dead letter named as the console's rows name it, `topic/partition/offset`."""
    topic, _, rest = text.partition("/")
    partition, _, offset = rest.partition("/")
    if not (topic and partition.isdigit() and offset.isdigit()):
        raise UsageError(
            f"{printable(text)!r} names no dead letter: give topic/partition/offset, e.g. "
            "orders.events.dlq/0/12"
        )
    return topic, int(partition), int(offset)


def find(letters: Iterable[DeadLetter], topic: str, partition: int, offset: int) -> DeadLetter:
    for letter in letters:
        if (letter.topic, letter.partition, letter.offset) == (topic, partition, offset):
            return letter
    raise UsageError(
        f"no dead letter at {topic}[{partition}]@{offset}; `sagastream dlq list --topic {topic}` "
        "shows what there is"
    )


def execute(client: EventClient, plans: list[Redrive]) -> list[tuple[Redrive, Delivery]]:
    """Publish every plan that is not refused (same key and value); each with the broker's
    answer, written or not."""
    sent = [
        (
            plan,
            client.publish_raw(
                plan.target, plan.letter.key, plan.letter.value or b"", list(plan.headers)
            ),
        )
        for plan in plans
        if not plan.refused and plan.target is not None
    ]
    answers = client.answers([pending for _, pending in sent])
    return [(plan, answer) for (plan, _), answer in zip(sent, answers, strict=True)]
