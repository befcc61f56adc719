"""Times given on the command line: epoch milliseconds or ISO 8601, and durations (10m)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sagastream.errors import UsageError

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_time(text: str) -> int:
    """Epoch milliseconds from digits, or from an ISO 8601 time (UTC when it names no zone)."""
    if text.isdigit():
        return int(text)
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 time: give "
            "epoch milliseconds or ISO 8601, e.g. 2026-11-25T09:30:00Z"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def parse_duration(text: str) -> int:
    """Milliseconds from a number with a unit: 500ms, 30s, 10m, 2h, 7d (1.5h works too)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", text)
    if found is None:
        raise UsageError(
            f"{text!r} is not a duration: give a number and a unit (ms, s, m, h or d), e.g. 10m"
        )
    return int(float(found[1]) * _UNIT_MS[found[2]])
