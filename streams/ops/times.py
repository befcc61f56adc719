"""Times given on the command line: epoch milliseconds or ISO 8601."""

from __future__ import annotations

from datetime import UTC, datetime


def parse_time(text: str) -> int:
    """Epoch milliseconds from digits, or from an ISO 8601 time (UTC when it names no zone)."""
    if text.isdigit():
        return int(text)
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 time: give "
            "epoch milliseconds or ISO 8601, e.g. 2026-11-25T09:30:00Z"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)
