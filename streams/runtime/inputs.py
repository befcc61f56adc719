"""Reading one consumed message: a decoded event, bad input for the DLQ, or a wait for the registry.

Both loops (orchestrator and handlers) read their inputs through `read_input`, so what counts as
poison and what counts as "try again later" is decided in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from sagastream.core.topology import Topology
from sagastream.runtime.limits import RecordLimits, fit_dead_letter
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import AvroCodec, DecodeError, RegistryUnavailable
from sagastream.wire.dlq import Origin, carried_headers, dead_letter_headers


@dataclass(frozen=True)
class Decoded:
    """A decodable, declared event: its type, its record (meta included) and its key."""

    event_type: str
    record: dict[str, Any]
    key: bytes


@dataclass(frozen=True)
class Rejected:
    """Bad input: goes to the topic's DLQ with `reason` (a short code) and `error` (for people)."""

    reason: str
    error: str


@dataclass(frozen=True)
class Unavailable:
    """The schema registry could not be asked: the message waits, it is not bad."""

    error: str


def read_input(
    msg: Message, codec: AvroCodec, topology: Topology, settings: Settings
) -> Decoded | Rejected | Unavailable:
    """Decode a message of a topology topic; keyless, undecodable or undeclared input is Rejected."""
    topic = logical_topic(settings, msg.topic() or "")
    try:
        event_type, record = codec.decode(msg.value() or b"")
    except DecodeError as exc:
        return Rejected(exc.reason, str(exc))
    except RegistryUnavailable as exc:
        return Unavailable(str(exc))
    spec = topology.events.get(event_type)
    if spec is None or topic not in spec.all_topics:
        return Rejected("undeclared_event_type", f"{event_type} is not declared for topic {topic}")
    key = msg.key()
    if not key:
        return Rejected("missing_key", f"{event_type} has no message key (the saga key)")
    return Decoded(event_type, record, key)


def logical_topic(settings: Settings, physical: str) -> str:
    """The topology name of a physical topic (the settings' prefix, or input prefix, removed)."""
    # a shadow replay's own prefix extends the live one it reads from: try it first
    for prefix in (settings.topic_prefix, settings.input_prefix):
        if prefix and physical.startswith(prefix):
            return physical[len(prefix) :]
    return physical


@dataclass(frozen=True)
class OutRecord:
    """A record to produce: physical topic, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(
    msg: Message,
    topology: Topology,
    settings: Settings,
    rejected: Rejected,
    worker: str,
    attempts: int = 1,
    limits: RecordLimits | None = None,
) -> OutRecord:
    """The DLQ record of a consumed message: its bytes unchanged, headers saying why and whence;
    cut to fit the DLQ topic's record limit if need be (`fit_dead_letter`)."""
    physical = msg.topic() or ""
    topic = logical_topic(settings, physical)
    dlq = topology.dlq(topic) if topic in topology.topic_map else f"{topic}.dlq"
    kind, stamp = msg.timestamp()
    origin = Origin(physical, msg.partition() or 0, msg.offset() or 0, stamp if kind else None)
    headers = dead_letter_headers(origin, rejected.reason, rejected.error, worker, attempts)
    headers += carried_headers(msg.headers())
    physical_dlq = settings.topic(dlq)
    limit = (limits or RecordLimits(settings.max_record_bytes)).of(physical_dlq)
    return OutRecord(physical_dlq, *fit_dead_letter(msg.key(), msg.value(), headers, limit))
