"""A worker's logging: text or JSON lines (SAGASTREAM_LOG_FORMAT), and the one line it writes
per saga decision and per handled command.

A JSON line holds the record's time, level, logger and message, and of the fields a call
passes in `extra` only those named in FIELDS: ids, names and outcomes, never an event's
payload, so no secret a saga carries reaches the log. Decision and command lines go to the
loggers `sagastream.decisions` and `sagastream.commands`, at INFO: always written in JSON
format, and in text format only at `--loglevel debug` (a line per event is too much to read).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

decisions = logging.getLogger("sagastream.decisions")
commands = logging.getLogger("sagastream.commands")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# the `extra` fields a JSON line carries, in this order; anything else passed is left out
FIELDS = (
    "saga",
    "key",
    "event_type",
    "event_id",
    "correlation_id",
    "trace_id",
    "span_id",
    "step",
    "attempt",
    "status",
    "commands",
    "changes",
    "role",
    "command",
    "result",
)
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup(loglevel: str, log_format: str) -> None:
    """The root handler of a worker process, and whether decision and command lines show."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=loglevel.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per schema registry request
    debug = loglevel.upper() == "DEBUG"
    trail = logging.INFO if log_format == "json" or debug else logging.WARNING
    for logger in (decisions, commands):
        logger.setLevel(trail)


def trace_ids(traceparent: str | None) -> tuple[str | None, str | None]:
    """The trace id and span id of a W3C traceparent (None, None if it is not one)."""
    match = _TRACEPARENT.fullmatch(traceparent or "")
    return (match[1], match[2]) if match else (None, None)


def of_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The log fields of an event's envelope."""
    trace_id, span_id = trace_ids(meta.get("traceparent"))
    return {
        "key": meta.get("saga_key"),
        "event_type": meta.get("event_type"),
        "event_id": meta.get("event_id"),
        "correlation_id": meta.get("correlation_id"),
        "trace_id": trace_id,
        "span_id": span_id,
        "step": meta.get("step"),
        "attempt": meta.get("attempt"),
    }


def decided(
    saga: str,
    meta: Mapping[str, Any],
    status: str | None,
    sent: Iterable[str],
    changes: Iterable[str],
) -> None:
    """The line of one decision: what came in, the saga's status, the commands it sent and
    its lifecycle notes (retries, timeouts, branches taken)."""
    if not decisions.isEnabledFor(logging.INFO):
        return
    fields = {**of_meta(meta), "saga": saga, "status": status}
    fields.update(commands=list(sent), changes=list(changes))
    decisions.info(
        "%s %s: %s decided (%s)", saga, fields["key"], fields["event_type"], status, extra=fields
    )


def handled(role: str, saga: str, meta: Mapping[str, Any], result: str | None) -> None:
    """The line of one handled command: the role, the command, and the result it answered
    with (a StepAttemptFailed when it failed; None when nobody is told)."""
    if not commands.isEnabledFor(logging.INFO):
        return
    fields = {**of_meta(meta), "saga": saga, "role": role, "result": result}
    fields["command"] = fields["event_type"]
    commands.info(
        "%s handled %s of %s: %s", role, fields["command"], fields["key"], result, extra=fields
    )
