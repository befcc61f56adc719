"""Exporting the span model through the OpenTelemetry SDK (runtime/tracing.py), to an in-memory
exporter: explicit ids and times, parents, sampling by the OTEL_* variables, and the handler's
span that its function's own spans nest under."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sagastream.core.spans import Span, SpanEvent
from sagastream.runtime import tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAGA = Span(
    "saga order", "saga", TRACE, "1111111111111111", "00f067aa0ba902b7", 1_000, 3_000,
    {"saga.type": "order", "saga.critical_path": ["payment"], "saga.outcome": "completed"},
)  # fmt: skip
STEP = Span(
    "step payment", "attempt", TRACE, "2222222222222222", "1111111111111111", 1_000, 2_500,
    {"saga.step": "payment", "saga.attempt": 1}, (SpanEvent("retry scheduled", 2_500, {"n": 2}),),
    "attempt 1 failed",
)  # fmt: skip


def _exported(tracer: tracing.Tracer, memory: InMemorySpanExporter) -> dict[str, Any]:
    tracer.provider.force_flush()
    return {s.name: s for s in memory.get_finished_spans()}


def test_spans_go_out_with_their_own_ids_times_and_parents() -> None:
    memory = InMemorySpanExporter()
    tracer = tracing.Tracer("shop-orchestrator", memory)
    tracer.export([SAGA, STEP])
    out = _exported(tracer, memory)
    saga, step = out["saga order"], out["step payment"]
    assert f"{saga.context.trace_id:032x}" == TRACE
    assert f"{saga.context.span_id:016x}" == "1111111111111111"
    assert f"{saga.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert f"{step.parent.span_id:016x}" == "1111111111111111"
    assert (step.start_time, step.end_time) == (1_000_000_000, 2_500_000_000)
    assert step.status.status_code == StatusCode.ERROR
    assert step.status.description == "attempt 1 failed"
    assert [(e.name, e.timestamp) for e in step.events] == [("retry scheduled", 2_500_000_000)]
    assert list(saga.attributes["saga.critical_path"]) == ["payment"]
    assert saga.resource.attributes["service.name"] == "shop-orchestrator"
    tracer.shutdown()


def test_the_sampler_of_the_otel_variables_decides_per_trace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.0")
    memory = InMemorySpanExporter()
    tracer = tracing.Tracer("s", memory)
    tracer.export([SAGA, STEP])
    assert _exported(tracer, memory) == {}
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "1.0")
    tracer = tracing.Tracer("s", memory)
    tracer.export([SAGA, STEP])
    assert set(_exported(tracer, memory)) == {"saga order", "step payment"}


def test_a_saga_whose_start_was_not_sampled_is_not_exported() -> None:
    memory = InMemorySpanExporter()
    tracer = tracing.Tracer("s", memory)  # parentbased_always_on: follows the start's flag
    tracer.export([replace(SAGA, sampled=False), replace(STEP, sampled=False)])
    assert _exported(tracer, memory) == {}


def test_a_handler_span_is_its_attempts_child_and_the_functions_spans_nest_in_it() -> None:
    memory = InMemorySpanExporter()
    tracer = tracing.Tracer("shop-payment", memory)
    traceparent = f"00-{TRACE}-2222222222222222-01"
    # what a handler's own instrumentation does (through the global provider, which a worker
    # sets to this one)
    user_code = tracer.provider.get_tracer("user code")
    with (
        tracer.handling("handle ChargePayment", traceparent, {"messaging.system": "kafka"}),
        user_code.start_as_current_span("http POST"),
    ):
        pass
    out = _exported(tracer, memory)
    inner = out["http POST"]
    handler = out["handle ChargePayment"]
    assert handler.kind == SpanKind.CONSUMER
    assert f"{handler.parent.span_id:016x}" == "2222222222222222"
    assert f"{handler.context.trace_id:032x}" == TRACE
    assert handler.attributes["messaging.system"] == "kafka"
    assert inner.parent.span_id == handler.context.span_id


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_on_only_with_an_endpoint_and_not_disabled(
    env: dict[str, str], on: bool
) -> None:
    assert tracing.enabled(env) is on
