"""A saga's trace as text: the neutral span form (`TextSpan`) both Jaeger's query API JSON
(`from_jaeger`) and the kit's spans (`from_spans`, sagastream.core.spans) convert to, the
renderer of a span tree (`render`), the tree's shape (`shape`, `parse_shape`: what a test
compares), and `sagastream trace show`'s reading of a saga's trace from Jaeger (`fetch_trace`).

The text, one line per span, indented by parent, then its events and, for the saga span, its
critical path and slack:

    saga notice  +0.0 ms  2003.1 ms  outcome=completed
      = critical path: email; slack: email 0 ms, push 1000 ms, sms 1500 ms
      step email  +0.4 ms  2001.8 ms  attempt=1 outcome=succeeded
        - when +0.4 ms  when=start.has_app result=True
        handle SendEmail  +3.0 ms  2000.2 ms
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sagastream.core.spans import Span
from sagastream.errors import SagastreamError

INDENT = "  "
EVENT = "- "
CRITICAL = "= "
# the attributes a span's line shows, by the name it shows them with
KEY_ATTRIBUTES = (("saga.attempt", "attempt"), ("saga.outcome", "outcome"))
QUERY_TIMEOUT_S = 10.0
# loopback and cluster-internal query APIs: an HTTP proxy of the environment would not reach them
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TraceNotFound(SagastreamError):
    """The query API has no such trace, or could not be read."""


@dataclass(frozen=True, slots=True)
class TextEvent:
    """A span event: its name, when (epoch microseconds) and what it recorded."""

    name: str
    at_us: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextSpan:
    """A span in the form the renderer reads, whatever recorded it (times: epoch microseconds;
    `parent_id` None or not in the trace: a root)."""

    name: str
    span_id: str
    parent_id: str | None
    start_us: int
    end_us: int
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[TextEvent, ...] = ()
    error: str | None = None


# -- sources -------------------------------------------------------------------------------------


def from_spans(spans: Iterable[Span]) -> list[TextSpan]:
    """The kit's (or the orchestrator's) spans, sagastream.core.spans, in the neutral form."""
    return [
        TextSpan(
            s.name,
            s.span_id,
            s.parent_id,
            s.start_ms * 1000,
            s.end_ms * 1000,
            dict(s.attributes),
            tuple(TextEvent(e.name, e.at_ms * 1000, dict(e.attributes)) for e in s.events),
            s.error,
        )
        for s in spans
    ]


def from_jaeger(trace: Mapping[str, Any]) -> list[TextSpan]:
    """One trace of Jaeger's query API (an item of `/api/traces/{id}`'s `data`)."""
    out = []
    for raw in trace.get("spans") or []:
        parents = [
            ref["spanID"]
            for ref in raw.get("references") or []
            if ref.get("refType") == "CHILD_OF" and ref.get("traceID") == raw.get("traceID")
        ]
        tags = _pairs(raw.get("tags"))
        start = int(raw.get("startTime", 0))
        error = tags.get("otel.status_description") if tags.get("error") is True else None
        out.append(
            TextSpan(
                str(raw.get("operationName", "")),
                str(raw["spanID"]),
                parents[0] if parents else None,
                start,
                start + int(raw.get("duration", 0)),
                {k: _json_list(v) for k, v in tags.items()},
                tuple(_jaeger_event(log) for log in raw.get("logs") or []),
                None if error is None else str(error),
            )
        )
    return out


def _pairs(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: item.get("value") for item in items or []}


def _json_list(value: Any) -> Any:
    """Jaeger shows an OpenTelemetry list attribute as its JSON text: the list again."""
    if isinstance(value, str) and value.startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _jaeger_event(log: Mapping[str, Any]) -> TextEvent:
    fields = {k: _json_list(v) for k, v in _pairs(log.get("fields")).items()}
    name = str(fields.pop("event", ""))
    return TextEvent(name, int(log.get("timestamp", 0)), fields)


# -- the tree ------------------------------------------------------------------------------------


def _children(spans: list[TextSpan]) -> tuple[list[TextSpan], dict[str, list[TextSpan]]]:
    """The roots and each span's children, in start order (then by name: parallel steps that
    start in the same decision have the same start, and must print the same from any source)."""
    ids = {s.span_id for s in spans}
    ordered = sorted(spans, key=lambda s: (s.start_us, s.name, s.span_id))
    roots = [s for s in ordered if s.parent_id is None or s.parent_id not in ids]
    children: dict[str, list[TextSpan]] = {}
    for span in ordered:
        if span.parent_id in ids:
            children.setdefault(str(span.parent_id), []).append(span)
    return roots, children


def _walk(spans: list[TextSpan]) -> list[tuple[int, TextSpan]]:
    """(depth, span) in the order the tree prints: each span, then its children."""
    roots, children = _children(spans)
    out: list[tuple[int, TextSpan]] = []
    stack = [(0, root) for root in reversed(roots)]
    while stack:
        depth, span = stack.pop()
        out.append((depth, span))
        stack += [(depth + 1, child) for child in reversed(children.get(span.span_id, []))]
    return out


def shape(spans: list[TextSpan], skip: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """The tree's (depth, name) lines, leaving out spans whose name starts with one of `skip`
    (e.g. the handlers' "handle ", which the kit does not build) and their subtrees."""
    out: list[tuple[int, str]] = []
    hidden_below: int | None = None
    for depth, span in _walk(spans):
        if hidden_below is not None and depth > hidden_below:
            continue
        hidden_below = depth if span.name.startswith(skip) else None
        if hidden_below is None:
            out.append((depth, span.name))
    return out


def parse_shape(text: str, skip: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """The (depth, name) lines of a rendered tree (`render`'s text), as `shape` gives them."""
    out: list[tuple[int, str]] = []
    hidden_below: int | None = None
    for line in text.splitlines():
        body = line.lstrip(" ")
        depth = (len(line) - len(body)) // len(INDENT)
        if not body or body.startswith((EVENT, CRITICAL, "trace ")):
            continue  # an event, a critical path or the heading: not a span
        name = body.split("  +", 1)[0]
        if hidden_below is not None and depth > hidden_below:
            continue
        hidden_below = depth if name.startswith(skip) else None
        if hidden_below is None:
            out.append((depth, name))
    return out


# -- the text ------------------------------------------------------------------------------------


def render(spans: list[TextSpan], heading: str | None = None) -> str:
    """The span tree as text: per span its offset from the trace's start and its duration (ms)
    and key attributes, its events below it, and for a span with a critical path, that path and
    each step's slack."""
    if not spans:
        return "(no spans)"
    t0 = min(s.start_us for s in spans)
    lines = [] if heading is None else [heading]
    for depth, span in _walk(spans):
        pad = INDENT * depth
        took = _ms(span.end_us - span.start_us)
        lines.append(f"{pad}{span.name}  {_ms(span.start_us - t0, '+')}  {took}{_keys(span)}")
        path = span.attributes.get("saga.critical_path")
        if path is not None:
            lines.append(f"{pad}{INDENT}{CRITICAL}{_critical(path, span.attributes)}")
        for event in sorted(span.events, key=lambda e: e.at_us):
            seen = " ".join(f"{k}={v}" for k, v in sorted(event.attributes.items()))
            lines.append(
                f"{pad}{INDENT}{EVENT}{event.name} {_ms(event.at_us - t0, '+')}"
                + (f"  {seen}" if seen else "")
            )
    return "\n".join(lines)


def _ms(us: int, sign: str = "") -> str:
    return f"{sign}{us / 1000:.1f} ms"


def _keys(span: TextSpan) -> str:
    shown = [f"{label}={span.attributes[k]}" for k, label in KEY_ATTRIBUTES if k in span.attributes]
    if span.error:
        shown.append(f"error={span.error!r}")
    return f"  {' '.join(shown)}" if shown else ""


def _critical(path: Any, attributes: Mapping[str, Any]) -> str:
    steps = path if isinstance(path, list) else [path]
    prefix = "saga.slack_ms."
    slack = sorted((k[len(prefix) :], v) for k, v in attributes.items() if k.startswith(prefix))
    text = f"critical path: {' -> '.join(map(str, steps)) or '(none)'}"
    if slack:
        text += "; slack: " + ", ".join(f"{step} {ms} ms" for step, ms in slack)
    return text


# -- Jaeger --------------------------------------------------------------------------------------


def ui_link(ui_url: str | None, trace_id: str | None) -> str | None:
    """Where Jaeger's UI at `ui_url` shows trace `trace_id`; None without a UI, without a trace
    id, or for a base that is no http(s) address (a page must not link anything else)."""
    if not ui_url or not trace_id or not ui_url.lower().startswith(("http://", "https://")):
        return None
    return f"{ui_url.rstrip('/')}/trace/{trace_id.lower()}"


def fetch_trace(query_url: str, trace_id: str) -> dict[str, Any]:
    """Trace `trace_id` from the Jaeger query API at `query_url` (its `data` item)."""
    url = f"{query_url.rstrip('/')}/api/traces/{trace_id.lower()}"
    try:
        with _OPENER.open(url, timeout=QUERY_TIMEOUT_S) as answer:
            data = json.load(answer).get("data") or []
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise TraceNotFound(
                f"Jaeger's query API answered {exc.code} to GET {url}; check "
                "SAGASTREAM_TRACES_URL names the query API (port 16686 by default)"
            ) from exc
        data = []
    except (urllib.error.URLError, OSError) as exc:
        raise TraceNotFound(
            f"cannot read {url} ({exc}); is Jaeger running (`sagastream jaeger start`) and "
            "SAGASTREAM_TRACES_URL its query API?"
        ) from exc
    if not data:
        raise TraceNotFound(
            f"Jaeger at {query_url} has no trace {trace_id}: the workers export no spans "
            "(set OTEL_EXPORTER_OTLP_ENDPOINT and install sagastream[otel]), the saga was not "
            "sampled, its spans are still in a batch, or Jaeger dropped them (its retention)"
        )
    return dict(data[0])
