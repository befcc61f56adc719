"""Record size limits: what a produced record may weigh, checked before it enters a transaction.

The broker refuses a record batch over the topic's `max.message.bytes` and librdkafka refuses a
record over the producer's `message.max.bytes`. Either refusal, met at produce or commit time,
would abort the orchestrator's whole transaction (every input of the process, again on every
re-read) or kill a handler. So every record is measured here first: the loops dead-letter the
one input whose records do not fit, and a dead-letter copy that would not fit is cut to fit.

`RecordLimits` holds the limit per physical topic: `max_record_bytes`, lowered (with a warning)
for a topic or broker that accepts less, as read from the broker when a worker starts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, ConfigResource

from sagastream.runtime.settings import Settings
from sagastream.wire.dlq import HEADER_PREFIX

log = logging.getLogger("sagastream.limits")

REASON = "record_too_large"
# What a record costs on the wire beyond its key, value and header bytes, counted generously:
# the record batch header (61 bytes) and the record's own varints (length, attributes,
# timestamp and offset deltas, key, value and header lengths: at most 40 bytes).
RECORD_OVERHEAD = 128
# a header's two length varints, at most
HEADER_OVERHEAD = 10
# headers of a dead letter that was cut to fit: the original sizes, and what was cut
ORIGINAL_SIZE = HEADER_PREFIX + "original.size"
ORIGINAL_KEY_SIZE = HEADER_PREFIX + "original.key.size"
TRUNCATED = HEADER_PREFIX + "truncated"
Headers = list[tuple[str, bytes]]


def record_size(key: bytes | None, value: bytes | None, headers: Headers | None) -> int:
    """A record's size as the broker and librdkafka count it, or a little more."""
    extra = sum(len(k.encode()) + len(v) + HEADER_OVERHEAD for k, v in headers or [])
    return len(key or b"") + len(value or b"") + extra + RECORD_OVERHEAD


@dataclass(frozen=True)
class RecordLimits:
    """The largest record, in bytes, each physical topic takes; `default` for any other."""

    default: int
    topics: Mapping[str, int] = field(default_factory=dict)

    def of(self, topic: str) -> int:
        return self.topics.get(topic, self.default)


class RecordTooLarge(Exception):
    """One record an input would produce does not fit: that input is dead-lettered alone."""

    reason = REASON

    def __init__(self, what: str, topic: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} for {topic} would be {size} bytes, over the limit of {limit} "
            "(max_record_bytes, or the topic's max.message.bytes if lower)"
        )
        self.what, self.topic, self.size, self.limit = what, topic, size, limit


def check_fits(
    limits: RecordLimits,
    records: Iterable[tuple[str, str, bytes | None, bytes | None, Headers | None]],
) -> None:
    """Raise RecordTooLarge for the first of (what, topic, key, value, headers) over its limit."""
    for what, topic, key, value, headers in records:
        size, limit = record_size(key, value, headers), limits.of(topic)
        if size > limit:
            raise RecordTooLarge(what, topic, size, limit)


def fit_dead_letter(
    key: bytes | None, value: bytes | None, headers: Headers, limit: int
) -> tuple[bytes | None, bytes | None, Headers]:
    """A dead letter that fits `limit`: as it is, or with its value cut (then its key, if even
    that is not enough), saying so in headers with the original sizes. The original topic,
    partition and offset are in the dead-letter headers already: the whole record stays there."""
    if record_size(key, value, headers) <= limit:
        return key, value, headers
    marks: Headers = [(ORIGINAL_SIZE, str(len(value or b"")).encode()), (TRUNCATED, b"value")]
    room = limit - record_size(key, None, headers + marks)
    if room >= 0:
        return key, (value or b"")[:room], headers + marks
    # a key (or headers) too large on its own: keep the headers, which say where the record is
    marks = [
        (ORIGINAL_SIZE, str(len(value or b"")).encode()),
        (ORIGINAL_KEY_SIZE, str(len(key or b"")).encode()),
        (TRUNCATED, b"key,value"),
    ]
    return None, None, headers + marks


def clamp(setting: int, accepted: Mapping[str, int]) -> tuple[RecordLimits, list[str]]:
    """The limits for `max_record_bytes` = `setting` and what each topic accepts (its
    `max.message.bytes`, a record batch: one record plus RECORD_OVERHEAD fits); the warnings say
    which topics lowered it."""
    lowered: dict[str, int] = {}
    warnings = []
    for topic, batch in sorted(accepted.items()):
        if batch < setting:
            lowered[topic] = batch
            warnings.append(
                f"topic {topic} accepts records of at most {batch} bytes (max.message.bytes), "
                f"less than max_record_bytes={setting}: records for it are limited to {batch}; "
                f"raise the topic's max.message.bytes or lower SAGASTREAM_MAX_RECORD_BYTES"
            )
    return RecordLimits(setting, lowered), warnings


def discover(settings: Settings, topics: Iterable[str], timeout: float = 10.0) -> RecordLimits:
    """The limits for `topics`, after asking the broker what each accepts (`max.message.bytes`,
    the broker's default included). A broker that does not answer leaves the setting unchecked,
    with a warning: the worker's clients wait for the broker anyway."""
    names = sorted(set(topics))
    admin = AdminClient(settings.librdkafka())
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    accepted: dict[str, int] = {}
    unread: dict[str, str] = {}
    for resource, future in admin.describe_configs(resources, request_timeout=timeout).items():
        try:
            entry = future.result(timeout).get("max.message.bytes")
        except Exception as exc:  # a missing topic, an unreachable broker: check what answered
            unread[resource.name] = str(exc)
            continue
        if entry is not None and entry.value is not None:
            accepted[resource.name] = int(entry.value)
    if unread:
        topic, why = next(iter(unread.items()))
        log.warning(
            "could not read max.message.bytes of %d topics (%s: %s); max_record_bytes=%d is "
            "not checked against them",
            len(unread),
            topic,
            why,
            settings.max_record_bytes,
        )
    limits, warnings = clamp(settings.max_record_bytes, accepted)
    for warning in warnings:
        log.warning(warning)
    return limits
