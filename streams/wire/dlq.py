"""Dead-letter records: the original bytes plus headers that say why and where from."""

from __future__ import annotations

import time
from dataclasses import dataclass

HEADER_PREFIX = "dlq."
# How often a message has been redriven from a DLQ (`sagastream dlq redrive`). It rides on the
# redriven message and is carried into its next dead letter, so redrive can refuse endless loops.
REDRIVE_COUNT = HEADER_PREFIX + "redrive.count"
# An error message can quote the data that caused it (a whole record, say): the header keeps its
# beginning, so the dead letter stays small whatever the input was.
MAX_ERROR_CHARS = 2_000


@dataclass(frozen=True)
class Origin:
    """Where a message came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def dead_letter_headers(
    origin: Origin, reason: str, error: str, worker: str, attempts: int = 1
) -> list[tuple[str, bytes]]:
    """Headers of a dead-lettered message; `reason` is a short code, `error` the human message."""
    if len(error) > MAX_ERROR_CHARS:
        error = f"{error[:MAX_ERROR_CHARS]}... ({len(error) - MAX_ERROR_CHARS} more characters)"
    fields = {
        "reason": reason,
        "error": error,
        "original.topic": origin.topic,
        "original.partition": str(origin.partition),
        "original.offset": str(origin.offset),
        "original.timestamp": "" if origin.timestamp_ms is None else str(origin.timestamp_ms),
        "failed.at": str(int(time.time() * 1000)),
        "attempts": str(attempts),
        "worker": worker,
    }
    return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]


def read_dead_letter_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The dlq.* headers of a consumed message as a plain dict (prefix stripped)."""
    return {
        k[len(HEADER_PREFIX) :]: (v or b"").decode()
        for k, v in headers or []
        if k.startswith(HEADER_PREFIX)
    }


def carried_headers(
    headers: list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None] | None,
) -> list[tuple[str, bytes]]:
    """The headers of a consumed message that its dead letter keeps: the redrive count."""
    pairs = list(headers.items()) if isinstance(headers, dict) else headers or []
    return [
        (k, v if isinstance(v, bytes) else (v or "").encode())
        for k, v in pairs
        if k == REDRIVE_COUNT
    ]
