"""The real Jaeger the tracing tests read: the session fixture `jaeger` and its query helpers.

Each pytest process (each xdist worker) starts its own Jaeger v2 from the cached binary of
sagastream.local.jaeger on free loopback ports, so workers never see each other's traces or
clash on 4317/4318/16686, and a developer's `sagastream jaeger start` is left alone. If the
binary is missing the fixture builds it (minutes when cold; it waits on the build lock when
another process, e.g. CI's background build, is already building) and never skips. Under
SAGASTREAM_TEST_BROKER=testcontainers it still runs the local binary: the workers under test
run on the host and export to it over loopback.

The helpers read the query API (`/api/traces`, as the UI does) and poll until what the test
waits for is there, because spans reach storage through OTLP and a batch processor, later
than the test's own events.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sagastream.local import jaeger as localjaeger
from sagastream.local.proc import tail
from tests.integration.helpers import free_port

DEFAULT_TIMEOUT_S = 30.0
POLL_S = 0.25
LOOKBACK = "1h"  # a session's traces are younger than this
LIMIT = 1000  # traces per search; the query API's own default is far lower

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


@dataclass(frozen=True)
class Span:
    """One span as the query API returns it (times in microseconds since the epoch)."""

    trace_id: str
    span_id: str
    parent_id: str | None  # the CHILD_OF reference within the same trace, if any
    name: str
    service: str
    start_us: int
    duration_us: int
    tags: dict[str, Any]
    events: list[dict[str, Any]]  # Jaeger's "logs": {"timestamp", "fields": {key: value}}

    @property
    def end_us(self) -> int:
        return self.start_us + self.duration_us


@dataclass(frozen=True)
class Trace:
    trace_id: str
    spans: list[Span] = field(default_factory=list)

    def named(self, name: str) -> list[Span]:
        """The spans with this operation name, in start order."""
        return sorted((s for s in self.spans if s.name == name), key=lambda s: s.start_us)

    def children(self, parent: Span) -> list[Span]:
        """The direct children of `parent`, in start order."""
        return sorted(
            (s for s in self.spans if s.parent_id == parent.span_id), key=lambda s: s.start_us
        )

    def roots(self) -> list[Span]:
        """Spans without a parent in this trace."""
        ids = {s.span_id for s in self.spans}
        return [s for s in self.spans if s.parent_id is None or s.parent_id not in ids]


def _kv(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {item["key"]: item.get("value") for item in items or []}


def parse_trace(data: dict[str, Any]) -> Trace:
    """A trace of the query API's JSON (`/api/traces` and `/api/traces/{id}` data items)."""
    services = {pid: p.get("serviceName", "") for pid, p in (data.get("processes") or {}).items()}
    spans = []
    for raw in data.get("spans") or []:
        parents = [
            r["spanID"]
            for r in raw.get("references") or []
            if r.get("refType") == "CHILD_OF" and r.get("traceID") == raw["traceID"]
        ]
        spans.append(
            Span(
                trace_id=raw["traceID"],
                span_id=raw["spanID"],
                parent_id=parents[0] if parents else None,
                name=raw.get("operationName", ""),
                service=services.get(raw.get("processID", ""), ""),
                start_us=int(raw.get("startTime", 0)),
                duration_us=int(raw.get("duration", 0)),
                tags=_kv(raw.get("tags")),
                events=[
                    {"timestamp": e.get("timestamp"), "fields": _kv(e.get("fields"))}
                    for e in raw.get("logs") or []
                ],
            )
        )
    return Trace(trace_id=data["traceID"], spans=spans)


@dataclass
class Jaeger:
    """A running Jaeger of this test process: where to export, and how to read it back."""

    ports: localjaeger.JaegerPorts

    @property
    def otlp_endpoint(self) -> str:
        """OTLP/HTTP base URL (OTEL_EXPORTER_OTLP_ENDPOINT; exporters add /v1/traces)."""
        return f"http://{localjaeger.HOST}:{self.ports.otlp_http}"

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"http://{localjaeger.HOST}:{self.ports.otlp_grpc}"

    @property
    def query_url(self) -> str:
        return localjaeger.query_url(self.ports)

    def otel_env(self, service: str) -> dict[str, str]:
        """The standard OTEL_* variables that make a process export every span here."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": service,
            "OTEL_TRACES_SAMPLER": "always_on",
        }

    def get(self, path: str, **params: str | int) -> Any:
        """GET `path` of the query API with `params`: its JSON, or None when it answers 404."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"{self.query_url}{path}{query}"
        try:
            with _OPENER.open(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise AssertionError(
                f"Jaeger's query API answered {exc.code} to GET {url}: {exc.read()[:500]!r}"
            ) from exc

    def services(self) -> list[str]:
        return list((self.get("/api/services") or {}).get("data") or [])

    def traces(
        self,
        service: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        until: Callable[[list[Trace]], bool] = bool,
    ) -> list[Trace]:
        """The traces with spans of `service` once `until(traces)` holds (default: any)."""
        return self._poll(
            f"traces of service {service!r}",
            lambda: [
                parse_trace(t)
                for t in (
                    self.get("/api/traces", service=service, lookback=LOOKBACK, limit=LIMIT) or {}
                ).get("data")
                or []
            ],
            until,
            timeout,
        )

    def trace(
        self,
        trace_id: str,
        timeout: float = DEFAULT_TIMEOUT_S,
        until: Callable[[Trace], bool] = lambda t: bool(t.spans),
    ) -> Trace:
        """Trace `trace_id` (32 hex digits) once `until(trace)` holds (default: any span)."""

        def read() -> Trace:
            data = (self.get(f"/api/traces/{trace_id.lower()}") or {}).get("data") or []
            return parse_trace(data[0]) if data else Trace(trace_id)

        return self._poll(f"trace {trace_id}", read, until, timeout)

    def _poll(
        self, what: str, read: Callable[[], Any], until: Callable[[Any], bool], timeout: float
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = read()
            if until(found):
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"Jaeger at {self.query_url} did not give the {what} awaited within "
                    f"{timeout:.0f}s; last read: {str(found)[:1500]}\nservices it knows: "
                    f"{self.services()}\nits log ({localjaeger.log_file(self.ports.query)}):\n"
                    f"{tail(localjaeger.log_file(self.ports.query), lines=20)}"
                )
            time.sleep(POLL_S)


def free_jaeger_ports() -> localjaeger.JaegerPorts:
    """Four distinct free loopback ports (each probe's socket is closed before the next)."""
    chosen: list[int] = []
    while len(chosen) < 4:
        port = free_port()
        if port not in chosen:
            chosen.append(port)
    return localjaeger.JaegerPorts(*chosen)


@pytest.fixture(scope="session")
def jaeger(request: pytest.FixtureRequest) -> Iterator[Jaeger]:
    """This test process's own Jaeger (built first if missing), stopped at the session's end."""
    from tests.integration.conftest import _announce

    def say(message: str) -> None:
        _announce(request, f"jaeger: {message}", remember=False)

    if not localjaeger.status()["built"]:
        say(f"no binary at {localjaeger.binary_path()}: building it (or waiting for a build)")
    localjaeger.ensure_jaeger(log=say)
    # the ports are picked once the binary is there, so that Jaeger binds them a moment later,
    # not after a build of minutes in which another process may take one
    ports = free_jaeger_ports()
    localjaeger.start(log=say, ports=ports)
    found = Jaeger(ports)
    # the summary's line is the same for every xdist worker (said once); the ports differ
    _announce(
        request,
        f"integration Jaeger: local {localjaeger.JAEGER_VERSION} binary "
        f"{localjaeger.binary_path()}, one per test process on free ports",
    )
    say(f"query {found.query_url}, OTLP/HTTP {found.otlp_endpoint}")
    try:
        yield found
    finally:
        localjaeger.stop(log=lambda m: None, ports=ports)
        # its files are named by a port no later run will pick on purpose: not left to pile up
        run = localjaeger.run_dir()
        for leftover in (
            localjaeger.log_file(ports.query),
            localjaeger.config_file(ports.query),
            run / f"jaeger-{ports.query}.lock",
        ):
            with contextlib.suppress(OSError):
                leftover.unlink()
