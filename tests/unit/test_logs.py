"""Worker logs (sagastream.runtime.logs): JSON lines carry the ids of a decision or a handled
command and nothing else a caller passes; text format keeps those lines for debug."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from sagastream.runtime import logs

TRACE, SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
META = {
    "event_id": "5f0c5b7e-3c0e-4a3e-9d5e-9d1b1a0f0a01",
    "event_type": "ChargePayment",
    "saga_key": "order-1",
    "correlation_id": "corr-1",
    "traceparent": f"00-{TRACE}-{SPAN}-01",
    "step": "payment",
    "attempt": 2,
}


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def lines() -> Iterator[Lines]:
    """Lines of the loggers as `logs.setup` leaves them; the root logger restored after."""
    root = logging.getLogger()
    before = (root.handlers[:], root.level, logs.decisions.level, logs.commands.level)
    yield Lines()
    root.handlers[:] = before[0]
    root.setLevel(before[1])
    logs.decisions.setLevel(before[2])
    logs.commands.setLevel(before[3])


def configured(lines: Lines, loglevel: str, log_format: str) -> None:
    logs.setup(loglevel, log_format)
    logging.getLogger().addHandler(lines)


def test_a_json_line_has_time_level_logger_message_and_only_the_named_fields() -> None:
    record = logging.LogRecord(
        "sagastream.x", logging.WARNING, __file__, 1, "%s late", ("a",), None
    )
    record.__dict__.update(saga="order", key="k1", card_token="tok_secret", password="hunter2")
    line = json.loads(logs.JsonFormatter().format(record))
    assert line.keys() == {"time", "level", "logger", "message", "saga", "key"}
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "sagastream.x", "a late")
    assert line["time"].endswith("+00:00")


def test_an_exception_is_one_field_of_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), _exc_info())
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["error"]


def _exc_info() -> logging._SysExcInfoType:
    import sys

    return sys.exc_info()


@pytest.mark.parametrize(
    ("traceparent", "ids"),
    [
        (f"00-{TRACE}-{SPAN}-01", (TRACE, SPAN)),
        ("not-a-traceparent", (None, None)),
        (None, (None, None)),
    ],
)
def test_trace_and_span_ids_come_from_the_traceparent(
    traceparent: str | None, ids: tuple[str | None, str | None]
) -> None:
    assert logs.trace_ids(traceparent) == ids


def test_a_decision_line_names_the_saga_its_input_and_what_it_sent(lines: Lines) -> None:
    configured(lines, "warning", "json")
    started = {**META, "event_type": "OrderPlaced", "step": None, "attempt": 0}
    logs.decided("order", started, "running", ["ChargePayment"], ["step_started:payment"])
    (line,) = lines.lines
    assert line["logger"] == "sagastream.decisions"
    expected = {
        "saga": "order",
        "key": "order-1",
        "event_type": "OrderPlaced",
        "event_id": META["event_id"],
        "correlation_id": "corr-1",
        "trace_id": TRACE,
        "span_id": SPAN,
        "attempt": 0,
        "status": "running",
        "commands": ["ChargePayment"],
        "changes": ["step_started:payment"],
    }
    assert {k: line[k] for k in expected} == expected
    assert "step" not in line


def test_a_handled_command_line_names_role_command_step_attempt_and_result(lines: Lines) -> None:
    configured(lines, "warning", "json")
    logs.handled("payment", "order", META, "PaymentCharged")
    (line,) = lines.lines
    assert line["logger"] == "sagastream.commands"
    want = {"saga": "order", "role": "payment", "command": "ChargePayment", "step": "payment"}
    assert {k: line[k] for k in want} == want
    assert (line["attempt"], line["result"], line["trace_id"]) == (2, "PaymentCharged", TRACE)


def test_text_format_writes_decision_lines_at_debug_only(lines: Lines) -> None:
    configured(lines, "info", "text")
    logs.handled("payment", "order", META, "PaymentCharged")
    assert lines.lines == []
    configured(lines, "debug", "text")
    logs.handled("payment", "order", META, "PaymentCharged")
    assert len(lines.lines) == 1
