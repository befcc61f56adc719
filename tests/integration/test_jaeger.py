"""The `jaeger` fixture end to end: a span sent over OTLP/HTTP comes back from the query API."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request

from tests.integration.tracing import Jaeger


def _otlp_json_span(service: str, trace_id: str, parent: str, child: str) -> bytes:
    """One OTLP/HTTP JSON export request: a parent span and its child (ids in hex, as
    OTLP's JSON encoding has them), with one attribute and one event on the child."""
    now = time.time_ns()

    def span(span_id: str, name: str, parent_id: str, start: int, end: int) -> dict[str, object]:
        return {
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent_id,
            "name": name,
            "kind": 1,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end),
            "attributes": [{"key": "saga.step", "value": {"stringValue": "reserve"}}],
            "events": [
                {
                    "timeUnixNano": str(start + 1_000_000),
                    "name": "retry scheduled",
                    "attributes": [{"key": "attempt", "value": {"intValue": "2"}}],
                }
            ],
        }

    request = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "tests.integration.test_jaeger"},
                        "spans": [
                            span(parent, "saga order", "", now - 50_000_000, now),
                            span(child, "step reserve", parent, now - 40_000_000, now - 10_000_000),
                        ],
                    }
                ],
            }
        ]
    }
    return json.dumps(request).encode()


def test_a_span_sent_over_otlp_http_is_read_back_from_the_query_api(jaeger: Jaeger) -> None:
    service = f"test-{secrets.token_hex(4)}"
    trace_id, parent, child = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(8)
    post = urllib.request.Request(
        f"{jaeger.otlp_endpoint}/v1/traces",
        data=_otlp_json_span(service, trace_id, parent, child),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(post, timeout=10) as response:
        assert response.status == 200

    [found] = jaeger.traces(service, until=lambda ts: sum(len(t.spans) for t in ts) >= 2)
    assert found.trace_id == trace_id
    [saga] = found.roots()
    assert (saga.name, saga.span_id, saga.service) == ("saga order", parent, service)
    [step] = found.children(saga)
    assert (step.name, step.span_id, step.parent_id) == ("step reserve", child, parent)
    assert step.tags["saga.step"] == "reserve"
    assert step.duration_us == 30_000
    assert [e["fields"] for e in step.events] == [{"event": "retry scheduled", "attempt": 2}]

    by_id = jaeger.trace(trace_id, until=lambda t: len(t.spans) == 2)
    assert {s.span_id for s in by_id.spans} == {parent, child}
    assert service in jaeger.services()
