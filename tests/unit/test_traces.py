"""A saga's trace as text (sagastream.ops.traces), without a broker or Jaeger: the kit's spans of
the seeds' notification fan-out (tests/scenarios/notify) rendered, the same spans in the shape
Jaeger's query API gives them rendering alike, and the README's captured `sagastream trace show`
block keeping the shape the renderer makes from the kit's spans of that example."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.spans import Span
from sagastream.ops.traces import from_jaeger, from_spans, parse_shape, render, shape
from sagastream.testing import SagaTest
from tests.scenarios.notify.app import NoticeRequested, write_project

README = Path(__file__).resolve().parents[2] / "README.md"
HANDLERS = ("handle ",)  # the handlers' spans: Jaeger has them, the kit builds none


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("notify"))


def _spans(topology: Path, **notice: Any) -> list[Span]:
    kit = SagaTest.load(topology)
    key = kit.start(NoticeRequested(notice_id="n-1", **notice))
    kit.run()
    kit.advance(1_000)  # a retried email's backoff
    kit.run()
    assert kit.status(key) == "completed"
    return kit.spans(key)


def test_the_fan_out_renders_as_a_tree_with_times_attributes_events_and_critical_path(
    notify: Path,
) -> None:
    lines = render(from_spans(_spans(notify))).splitlines()
    assert lines == [
        "saga notice  +0.0 ms  2000.0 ms  outcome=completed",
        "  = critical path: email; slack: email 0 ms, push 1000 ms, sms 1500 ms",
        "  - completed +2000.0 ms  saga.completed_steps=['sms', 'push', 'email']",
        "  step email  +0.0 ms  2000.0 ms  attempt=1 outcome=succeeded",
        "  step push  +0.0 ms  1000.0 ms  attempt=1 outcome=succeeded",
        "    - when +0.0 ms  result=True when=start.has_app when.start.has_app=True",
        "  step sms  +0.0 ms  500.0 ms  attempt=1 outcome=succeeded",
    ]


def test_a_retried_step_shows_both_attempts_the_error_and_the_retry_event(notify: Path) -> None:
    text = render(from_spans(_spans(notify, email_ms=-2000)))
    assert shape(from_spans(_spans(notify, email_ms=-2000))) == [
        (0, "saga notice"),
        (1, "step email"),
        (1, "step push"),
        (1, "step sms"),
        (1, "step email"),
    ]
    assert "  step email  +0.0 ms  0.0 ms  attempt=1 outcome=failed error='attempt 1 failed'" in (
        text.splitlines()
    )
    assert re.search(r"^    - retry scheduled \+0\.0 ms  saga\.attempt=2 ", text, re.M)
    assert re.search(
        r"^  step email  \+\d+\.0 ms  \d+\.0 ms  attempt=2 outcome=succeeded$", text, re.M
    )


def _as_jaeger(spans: list[Span], handler_under: str) -> dict[str, Any]:
    """The spans as Jaeger's query API returns them (tags, logs with an `event` field, list
    attributes as JSON text, error tags), plus a handler span under `handler_under`'s span."""

    def tag(key: str, value: Any) -> dict[str, Any]:
        return {"key": key, "value": json.dumps(value) if isinstance(value, list) else value}

    trace = spans[0].trace_id
    raw = []
    for s in spans:
        tags = [tag(k, v) for k, v in s.attributes.items()]
        if s.error:
            tags += [tag("error", True), tag("otel.status_description", s.error)]
        raw.append(
            {
                "traceID": trace,
                "spanID": s.span_id,
                "operationName": s.name,
                "references": []
                if s.parent_id is None
                else [{"refType": "CHILD_OF", "traceID": trace, "spanID": s.parent_id}],
                "startTime": s.start_ms * 1000,
                "duration": (s.end_ms - s.start_ms) * 1000,
                "tags": tags,
                "logs": [
                    {
                        "timestamp": e.at_ms * 1000,
                        "fields": [tag("event", e.name)]
                        + [tag(k, v) for k, v in e.attributes.items()],
                    }
                    for e in s.events
                ],
            }
        )
    parent = next(s for s in spans if s.name == handler_under)
    raw.append(
        {
            "traceID": trace,
            "spanID": "00000000000000ff",
            "operationName": "handle SendEmail",
            "references": [{"refType": "CHILD_OF", "traceID": trace, "spanID": parent.span_id}],
            "startTime": parent.start_ms * 1000 + 1500,
            "duration": 1_997_000,
            "tags": [tag("messaging.system", "kafka")],
            "logs": [],
        }
    )
    return {"traceID": trace, "spans": raw}


def test_jaegers_json_renders_as_the_kits_spans_do_with_the_handler_nested(notify: Path) -> None:
    spans = _spans(notify, email_ms=-2000)
    data = _as_jaeger(spans, "step push")
    text = render(from_jaeger(data))
    kit = render(from_spans(spans))
    # the handler's span is the only difference: a child line under its step
    assert [line for line in text.splitlines() if "handle SendEmail" not in line] == (
        kit.splitlines()
    )
    assert "    handle SendEmail  +1.5 ms  1997.0 ms" in text.splitlines()
    assert shape(from_jaeger(data), skip=HANDLERS) == shape(from_spans(spans))
    assert parse_shape(text, skip=HANDLERS) == shape(from_spans(spans))
    assert parse_shape(text) == shape(from_jaeger(data))


def test_a_span_whose_parent_is_not_in_the_trace_is_a_root() -> None:
    from sagastream.ops.traces import TextSpan

    spans = [
        TextSpan("b", "2", "absent", 5_000, 6_000),
        TextSpan("a", "1", None, 1_000, 9_000),
        TextSpan("c", "3", "1", 2_000, 2_500),
    ]
    assert render(spans).splitlines() == [
        "a  +0.0 ms  8.0 ms",
        "  c  +1.0 ms  0.5 ms",
        "b  +4.0 ms  1.0 ms",
    ]
    assert render([]) == "(no spans)"


def test_trace_show_without_a_traces_url_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sagastream.ops.cli import main

    monkeypatch.delenv("SAGASTREAM_TRACES_URL", raising=False)
    assert main(["trace", "show", "notice", "n-1"]) == 2
    err = capsys.readouterr().err
    assert "SAGASTREAM_TRACES_URL is not set" in err and "http://127.0.0.1:16686" in err


def test_an_unreachable_query_api_is_named_with_what_to_check() -> None:
    import socket

    from sagastream.ops.traces import TraceNotFound, fetch_trace

    with socket.socket() as probe:  # a loopback port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TraceNotFound, match=r"cannot read http://127\.0\.0\.1:\d+/api/traces/ab"):
        fetch_trace(f"http://127.0.0.1:{port}/", "AB")


def _readme_trace_block() -> str:
    """The README's captured `sagastream trace show` output (the block after its command)."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"\$ (?:\S+=\S+ )*sagastream trace show notice [^\n]*\n(.*?)```", text, re.S)
    assert found, "README.md has no captured `$ sagastream trace show notice ...` block"
    return found[1]


def test_the_readme_trace_has_the_shape_the_renderer_makes_of_the_kits_spans(
    notify: Path,
) -> None:
    block = _readme_trace_block()
    assert parse_shape(block, skip=HANDLERS) == shape(from_spans(_spans(notify)))
    # the handlers under their steps: what only the real run shows
    handlers = [(d, n) for d, n in parse_shape(block) if n.startswith(HANDLERS)]
    assert handlers == [(2, "handle SendEmail"), (2, "handle SendPush"), (2, "handle SendSms")]
