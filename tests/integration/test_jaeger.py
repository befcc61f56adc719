"""The `jaeger` fixture end to end: a span sent over OTLP/HTTP comes back from the query API."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path

import pytest

from sagastream.local import jaeger as localjaeger
from tests.integration.tracing import Jaeger, free_jaeger_ports


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


@pytest.mark.usefixtures("jaeger")  # its binary, built (once) by the fixture
def test_jaeger_does_not_trace_its_own_queries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Jaeger's query service traces itself by default and exports those spans wherever the
    standard OTEL_* variables of its environment point: a shell set up to export to Jaeger
    (README) makes every query API call a trace of service "jaeger" there, and every stop wait
    10 s for an export to a port that may be closed. Here it is pointed at itself, with a short
    export delay, so a trace of its own would show up in its own storage."""
    ports = free_jaeger_ports()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{ports.otlp_grpc}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    localjaeger.start(log=lambda m: None, ports=ports)
    own = Jaeger(ports)
    try:
        for _ in range(5):
            assert own.services() == []
        # a span of ours, sent after those calls and read back: the pipeline has carried
        # whatever came before it; then some time for a self-export that came late
        service = f"test-{secrets.token_hex(4)}"
        trace_id = secrets.token_hex(16)
        post = urllib.request.Request(
            f"{own.otlp_endpoint}/v1/traces",
            data=_otlp_json_span(service, trace_id, secrets.token_hex(8), secrets.token_hex(8)),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(post, timeout=10).close()
        own.trace(trace_id)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert own.services() == [service]
            time.sleep(0.2)
    finally:
        localjaeger.stop(log=lambda m: None, ports=ports)
        (tmp_path / "jaeger.log").write_bytes(localjaeger.log_file(ports.query).read_bytes())
        for leftover in localjaeger.run_dir().glob(f"jaeger-{ports.query}.*"):
            leftover.unlink()
