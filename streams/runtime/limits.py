"""Record size limits: what a produced record may weigh, checked before it enters a transaction.

The broker refuses a record batch over the topic's `max.message.bytes` and librdkafka refuses a
record over the producer's `message.max.bytes`. Either refusal, met at produce or commit time,
would abort the orchestrator's whole transaction (every input of the process, again on every
re-read) or kill a handler. So every record is measured here first: the loops dead-letter the
one input whose records do not fit, and a dead-letter copy that would not fit is cut to fit.

`RecordLimits` holds the limit per physical topic: `max_record_bytes`, lowered (with a warning)
for a topic or broker that accepts less, as read from the broker when a worker starts. We lower
rather than refuse to start: a worker that does not start helps no one, and what the lowered
limit does not take is dead-lettered with its size, which says what to change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, ConfigEntry, ConfigResource

from sagastream.errors import SagastreamError
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
    size = len(key or b"") + len(value or b"") + RECORD_OVERHEAD
    for name, raw in headers or ():  # a loop, not sum(generator): every record is measured
        size += len(name.encode()) + len(raw) + HEADER_OVERHEAD
    return size


@dataclass(frozen=True)
class RecordLimits:
    """The largest record, in bytes, each physical topic takes; `default` for any other."""

    default: int
    topics: Mapping[str, int] = field(default_factory=dict)

    def of(self, topic: str) -> int:
        return self.topics.get(topic, self.default)


class RecordTooLarge(SagastreamError):
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


def clamp(
    setting: int, accepted: Mapping[str, int], broker: int | None = None
) -> tuple[RecordLimits, list[str]]:
    """The limits for `max_record_bytes` = `setting`, what each topic accepts (its
    `max.message.bytes`: a record batch, which one record plus RECORD_OVERHEAD fills) and what
    the broker accepts for any other topic (`message.max.bytes`); the warnings say what lowered
    the setting."""
    warnings = []
    default = setting
    if broker is not None and broker < setting:
        default = broker
        warnings.append(
            f"the broker accepts records of at most {broker} bytes (message.max.bytes), less "
            f"than max_record_bytes={setting}: records for topics without a larger "
            "max.message.bytes are limited to that; raise it or lower SAGASTREAM_MAX_RECORD_BYTES"
        )
    limits: dict[str, int] = {}
    for topic, batch in sorted(accepted.items()):
        if min(setting, batch) != default:
            limits[topic] = min(setting, batch)
        if batch < setting:
            warnings.append(
                f"topic {topic} accepts records of at most {batch} bytes (max.message.bytes), "
                f"less than max_record_bytes={setting}: records for it are limited to {batch}; "
                f"raise the topic's max.message.bytes or lower SAGASTREAM_MAX_RECORD_BYTES"
            )
    return RecordLimits(default, limits), warnings


def discover(settings: Settings, topics: Iterable[str], timeout: float = 10.0) -> RecordLimits:
    """The limits for `topics`, after asking the broker what each accepts (`max.message.bytes`)
    and what it accepts for topics that do not exist yet (its `message.max.bytes`). A broker that
    does not answer leaves the setting unchecked, with a warning: the worker's clients wait for
    the broker anyway."""
    admin = AdminClient(settings.librdkafka())
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in sorted(set(topics))]
    unread: dict[str, str] = {}
    try:
        brokers = admin.list_topics(timeout=timeout).brokers
        resources.append(ConfigResource(ConfigResource.Type.BROKER, str(min(brokers))))
    except Exception as exc:
        unread["the broker"] = str(exc)
    accepted: dict[str, int] = {}
    broker = None
    described = admin.describe_configs(resources, request_timeout=timeout) if resources else {}
    for resource, future in described.items():
        try:
            config = future.result(timeout)
        except Exception as exc:  # a missing topic, an unreachable broker: check what answered
            unread[resource.name] = str(exc)
            continue
        if resource.restype == ConfigResource.Type.BROKER:
            broker = _int_value(config.get("message.max.bytes"))
        elif (batch := _int_value(config.get("max.message.bytes"))) is not None:
            accepted[resource.name] = batch
    if broker is None:  # topics not read (not created yet, say) take the broker's limit
        topic, why = next(iter(unread.items()), ("the broker", "no message.max.bytes"))
        log.warning(
            "could not read what the broker accepts (%s: %s); max_record_bytes=%d is checked "
            "against %d topics only",
            topic,
            why,
            settings.max_record_bytes,
            len(accepted),
        )
    limits, warnings = clamp(settings.max_record_bytes, accepted, broker)
    for warning in warnings:
        log.warning(warning)
    return limits


def _int_value(entry: ConfigEntry | None) -> int | None:
    return None if entry is None or entry.value is None else int(entry.value)
