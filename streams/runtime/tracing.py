"""Exporting spans through OpenTelemetry (the `sagastream[otel]` extra), configured by the
standard OTEL_* variables: the orchestrator's spans as sagastream.core.spans builds them (with
their decided times and derived ids), and the span a handler's function runs in.

Tracing is off, at the cost of one `if` per decision or command, when the SDK is not installed,
OTEL_SDK_DISABLED is true, OTEL_TRACES_EXPORTER is none, or no OTLP endpoint is set
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). The sampler is the SDK's
(OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG); it decides per saga trace, so that a saga's
spans, its handlers' included, are all kept or all dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sagastream.core.spans import Span
from sagastream.core.topology import ATTEMPT_FAILED_EVENT

log = logging.getLogger(__name__)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event as OtelEvent
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed: tracing stays off
    trace = None  # type: ignore[assignment]

_SCOPE = InstrumentationScope("sagastream") if trace is not None else None
_KINDS = {"saga": "INTERNAL", "attempt": "PRODUCER", "compensation": "PRODUCER"}


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the OTEL_* variables (and the installed packages) turn tracing on."""
    env = os.environ if env is None else env
    if trace is None or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


class Tracer:
    """One process's span export: a TracerProvider with a batching OTLP exporter."""

    def __init__(self, service: str, exporter: Any = None) -> None:
        """`exporter`: where the batches go (default: OTLP over HTTP, as OTEL_* configure)."""
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or service})
        self.provider = TracerProvider(resource=resource)
        self.processor = BatchSpanProcessor(exporter or OTLPSpanExporter())
        self.provider.add_span_processor(self.processor)
        self.resource = resource
        self.tracer = self.provider.get_tracer("sagastream")
        self._propagator = TraceContextTextMapPropagator()

    def export(self, spans: Sequence[Span]) -> None:
        """Hand finished spans (a committed decision's) to the batching exporter, if their
        saga's trace is sampled."""
        for span in spans:
            if self._sampled(span):
                self.processor.on_end(self._readable(span))

    def _sampled(self, span: Span) -> bool:
        parent = _context(span) if span.parent_id else None
        result = self.provider.sampler.should_sample(parent, int(span.trace_id, 16), span.name)
        return bool(result.decision.is_sampled())

    def _readable(self, span: Span) -> ReadableSpan:
        flags = TraceFlags(TraceFlags.SAMPLED)
        own = SpanContext(int(span.trace_id, 16), int(span.span_id, 16), False, flags)
        parent = (
            None
            if span.parent_id is None
            else SpanContext(int(span.trace_id, 16), int(span.parent_id, 16), True, flags)
        )
        status = (
            Status(StatusCode.OK) if span.error is None else Status(StatusCode.ERROR, span.error)
        )
        return ReadableSpan(
            span.name,
            context=own,
            parent=parent,
            resource=self.resource,
            attributes=_attributes(span.attributes),
            events=[
                OtelEvent(e.name, _attributes(e.attributes), e.at_ms * 1_000_000)
                for e in span.events
            ],
            kind=getattr(SpanKind, _KINDS.get(span.kind, "INTERNAL")),
            status=status,
            start_time=span.start_ms * 1_000_000,
            end_time=span.end_ms * 1_000_000,
            instrumentation_scope=_SCOPE,
        )

    @contextlib.contextmanager
    def handling(
        self, name: str, traceparent: str | None, attributes: Mapping[str, Any]
    ) -> Iterator[Any]:
        """The span a handler's function runs in, the child of the command's traceparent (its
        attempt's span): current while the function runs, so what it instruments nests under."""
        parent = self._propagator.extract({"traceparent": traceparent} if traceparent else {})
        with self.tracer.start_as_current_span(
            name, context=parent, kind=SpanKind.CONSUMER, attributes=_attributes(attributes)
        ) as span:
            yield span

    def shutdown(self) -> None:
        """Send what is batched (bounded by the exporter's timeout) and stop."""
        try:
            self.provider.shutdown()
        except Exception:  # telemetry never stops a worker from stopping
            log.warning("tracing: the last spans could not be sent", exc_info=True)


def tracer(service: str) -> Tracer | None:
    """A role's span export if the OTEL_* variables turn tracing on, else None. The process's
    first is also OpenTelemetry's global provider: what a handler's code instruments (an HTTP
    client, a database) goes out with it, nested in the handler's span."""
    if not enabled():
        return None
    made = Tracer(service)
    global _GLOBAL_SET
    if not _GLOBAL_SET:
        trace.set_tracer_provider(made.provider)
        _GLOBAL_SET = True
    return made


_GLOBAL_SET = False


def answered(span: Any, result_type: str | None, fields: Mapping[str, Any] | None) -> None:
    """What a handler's attempt answered, on its span: the result type, or a failed attempt's
    kind and message as the span's error."""
    if result_type is None:
        span.set_attribute("saga.outcome", "unanswered")
        return
    span.set_attribute("saga.outcome", result_type)
    if result_type == ATTEMPT_FAILED_EVENT and fields is not None:
        why = f"{fields.get('kind')}: {fields.get('error_type')}: {fields.get('message')}"
        span.set_status(Status(StatusCode.ERROR, why))


def _context(span: Span) -> Any:
    """The context of a span's parent, as a sampler reads it: sampled as the saga's start was."""
    assert span.parent_id is not None
    flags = TraceFlags(TraceFlags.SAMPLED if span.sampled else TraceFlags.DEFAULT)
    remote = SpanContext(int(span.trace_id, 16), int(span.parent_id, 16), True, flags)
    return trace.set_span_in_context(trace.NonRecordingSpan(remote), otel_context.Context())


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """What OTLP carries: strings, numbers, booleans and lists of them (the rest as text)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, bool | int | float | str):
            out[name] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            out[name] = list(value)
        elif value is not None:
            out[name] = str(value)
    return out
