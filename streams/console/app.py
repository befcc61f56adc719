"""The console's web application: its routes, each a read through `ConsoleReader` rendered by a
Jinja template (autoescaped), and the HTTP rules it keeps: read-only (GET and HEAD only; with
actions on, also the POSTs of a signal form and a redrive, which actions.py guards), the
HTTP limits of the other servers (`Settings.http_limits`), loopback Host names when bound to
loopback, and headers that keep pages from being framed or running any script but the
console's own.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sagastream.console.actions import POST_PATHS, Actions
from sagastream.console.layout import dag_layout, lane_order, timeline
from sagastream.console.readers import ConsoleReader, now_ms
from sagastream.console.redrive import Redrives
from sagastream.console.svg import dag_svg, rate_svg, timeline_svg
from sagastream.console.views import SERIES, SORTS, SagaQuery
from sagastream.core.state import TERMINAL
from sagastream.core.topology import SagaSpec
from sagastream.errors import SagastreamError, UsageError
from sagastream.ops import asyncapi, dlq
from sagastream.ops.inspect import _clock, age
from sagastream.ops.times import parse_duration
from sagastream.ops.traces import ui_link
from sagastream.runtime.http import Limits

STATUSES = ("running", "compensating", "completed", "compensated", "failed")
PAGE_SIZE = 50
# seconds between refreshes of what changes by itself (the overview's live part, a running
# saga's page)
REFRESH_S = 10
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# nothing loads from elsewhere and no inline script runs: the pages are HTML, inline SVG, one
# sheet and one script of the console's own (console.js, which fetches the overview's part).
# No page address leaves for another site (Referrer-Policy same-origin); `no-referrer` would make
# browsers send `Origin: null` with the console's own forms, which the Origin check refuses.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "script-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Endpoint = Callable[[Request], Response]


def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("sagastream.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["clock"] = lambda ms: "-" if ms is None else _clock(ms)
    env.filters["age"] = lambda ms: "-" if ms is None else age(ms)
    env.filters["ms"] = lambda ms: "-" if ms is None else f"{ms} ms"
    env.filters["dlqtime"] = dlq.format_time
    env.filters["text"] = lambda b: "" if b is None else b.decode("utf-8", "backslashreplace")
    return env


class Pages:
    """The page handlers; each reads what it shows at the time of the request."""

    def __init__(
        self, reader: ConsoleReader, env: Environment, actions: Actions | None = None
    ) -> None:
        self.reader = reader
        self.env = env
        self.actions = actions

    def render(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        values.setdefault("refresh", None)
        page = self.env.get_template(name).render(
            settings=self.reader.settings, now=now_ms(), actions=self.actions is not None, **values
        )
        return HTMLResponse(page, status_code=status)

    def overview(self, request: Request) -> Response:
        """The overview: a page around its live part, which console.js refreshes."""
        return self.render("overview.html", live=REFRESH_S, **self._overview())

    def overview_live(self, request: Request) -> Response:
        """The overview's live part alone, read now (an HTML fragment, no page around it)."""
        page = self.env.get_template("overview_live.html").render(**self._overview())
        return HTMLResponse(page)

    def _overview(self) -> dict[str, Any]:
        found = self.reader.overview()
        charts = {t.saga: rate_svg(t.per_minute, SERIES) for t in found.types}
        return {"overview": found, "charts": charts, "series": SERIES, "lags": self.reader.lags()}

    def sagas(self, request: Request) -> Response:
        query = _query(request, self.reader.topology.sagas)
        found, versions, fresh = self.reader.sagas(query)
        return self.render(
            "sagas.html",
            query=query,
            found=found,
            versions=versions,
            fresh=fresh,
            saga_types=list(self.reader.topology.sagas),
            statuses=STATUSES,
            sorts=list(SORTS),
            older=request.query_params.get("older_than", ""),
        )

    def saga(self, request: Request) -> Response:
        name, key = request.path_params["saga"], request.path_params["key"]
        _spec(self.reader.topology.sagas, name)
        view = self.reader.saga(name, key)
        if view is None:
            return self.render(
                "error.html",
                404,
                title="No such saga",
                message=f"no {name} saga with key {key!r} is stored (never started, not started "
                "yet, or removed after its retention_ms)",
            )
        spec, version = self.reader.definition(name, view.shape)
        depends = {step: s.depends_on for step, s in spec.steps.items()}
        human = [step for step, s in spec.steps.items() if s.human]
        end = view.ended_ms if view.ended_ms is not None else now_ms()
        line = timeline(view.history, lane_order(depends), human, view.started_ms, end)
        states = {s.name: s.state for s in view.steps}
        waiting = [step for step in human if states.get(step) == "running"]
        session, csrf = self.actions.form_token(request) if self.actions else ("", "")
        page = self.render(
            "saga.html",
            view=view,
            version=version,
            dag=dag_svg(dag_layout(depends), states),
            gantt=timeline_svg(line),
            # a page with a form is not reloaded under the hand filling it in
            refresh=None if view.status in TERMINAL or (waiting and self.actions) else REFRESH_S,
            waiting=waiting if self.actions else [],
            csrf=csrf,
            signalled=request.query_params.get("signalled"),
            trace=ui_link(self.reader.settings.traces_ui(), view.trace_id),
        )
        if self.actions:
            self.actions.keep_session(request, page, session)
        return page

    def dead_letters(self, request: Request) -> Response:
        """Every dead letter grouped; the messages of one topic and reason if the query names
        them (`dlq redrive`'s selection)."""
        letters = self.reader.dead_letters()
        q = request.query_params
        selection = dlq.Selection(topic=q.get("topic") or None, reason=q.get("reason") or None)
        return self.render(
            "dlq.html",
            groups=dlq.group(letters),
            letters=dlq.select(letters, selection),
            selection=selection,
        )

    def dead_letter(self, request: Request) -> Response:
        p = request.path_params
        letter = self.reader.dead_letter(p["topic"], p["partition"], p["offset"])
        return self.render("dead_letter.html", letter=letter, shown=dlq.show(letter))

    def topology(self, request: Request) -> Response:
        topology = self.reader.topology
        dags = {
            name: dag_svg(dag_layout({step: s.depends_on for step, s in spec.steps.items()}))
            for name, spec in topology.sagas.items()
        }
        known = set(self.reader.schemas.event_types())
        schemas = {
            name: json.dumps(self.reader.schemas.raw(event.schema_name), indent=2)
            for name, event in topology.events.items()
            if event.schema_name in known
        }
        return self.render("topology.html", topology=topology, dags=dags, schemas=schemas)

    def asyncapi(self, request: Request) -> Response:
        """The topology's AsyncAPI document (`sagastream topology asyncapi`)."""
        found = asyncapi.document(self.reader.topology, self.reader.schemas, self.reader.settings)
        return Response(asyncapi.as_yaml(found), media_type="application/yaml")


def _spec(sagas: dict[str, SagaSpec], name: str) -> SagaSpec:
    spec = sagas.get(name)
    if spec is None:
        raise UsageError(f"unknown saga {name!r}; topology.yaml has {', '.join(sagas)}")
    return spec


def _query(request: Request, sagas: dict[str, SagaSpec]) -> SagaQuery:
    """The sagas page's filters from its query string; UsageError naming a bad one."""
    q = request.query_params
    saga, status = q.get("saga", ""), q.get("status", "")
    if saga:
        _spec(sagas, saga)
    if status and status not in STATUSES:
        raise UsageError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    sort = q.get("sort") or "oldest"
    if sort not in SORTS:
        raise UsageError(f"unknown order {sort!r}; one of {', '.join(SORTS)}")
    older = q.get("older_than", "").strip()
    page = q.get("page", "1")
    if not page.isdigit():
        raise UsageError(f"page {page!r} is no page number")
    return SagaQuery(
        saga=saga,
        status=status,
        key=q.get("key", ""),
        older_than_ms=parse_duration(older) if older else None,
        version=q.get("version", "").strip(),
        waiting=bool(q.get("waiting")),
        sort=sort,
        page=int(page),
        size=PAGE_SIZE,
    )


def _guarded(pages: Pages, handler: Endpoint) -> Endpoint:
    """A handler whose expected errors become pages: a bad request names what was wrong (400),
    an unreachable broker or registry says so (503)."""

    def run(request: Request) -> Response:
        try:
            return handler(request)
        except UsageError as exc:
            return pages.render("error.html", 400, title="Not understood", message=str(exc))
        except (SagastreamError, TimeoutError) as exc:
            return pages.render("error.html", 503, title="Kafka did not answer", message=str(exc))

    return run


class Limited:
    """ASGI middleware: the HTTP rules of the module docstring that routing does not keep."""

    def __init__(self, app: Any, limits: Limits, writable: bool = False) -> None:
        self.app = app
        self.limits = limits
        # actions on: a signal form's and a redrive's POST are taken (actions.py guards them)
        self.writable = writable

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

    def _refusal(self, scope: Any) -> Response | None:
        posting = self.writable and scope["method"] == "POST"
        if posting and any(path.match(scope["path"]) for path in POST_PATHS):
            pass
        elif scope["method"] not in ("GET", "HEAD"):
            return PlainTextResponse(
                "the console is read-only: GET and HEAD only", 405, {"Allow": "GET, HEAD"}
            )
        for name, value in scope.get("headers", []):
            too_long = value.isdigit() and int(value) > self.limits.max_body_bytes
            if name == b"content-length" and too_long:
                return PlainTextResponse("a body is never read here", 413)
        return None


def build_app(reader: ConsoleReader, host: str, actions: Actions | None = None) -> Starlette:
    """The console as an ASGI application reading through `reader`; bound to `host`; taking
    decisions for waiting human steps when given `actions`."""
    pages = Pages(reader, templates(), actions)
    redrives = Redrives(reader, pages.render, actions)
    writes = (
        []
        if actions is None
        else [
            Route("/sagas/{saga}/{key:path}/steps/{step}/signal", actions.signal, methods=["POST"]),
            Route("/dlq/redrive", redrives.execute, methods=["POST"]),
        ]
    )
    routes = writes + [
        Route("/", _guarded(pages, pages.overview)),
        Route("/overview/live", _guarded(pages, pages.overview_live)),
        Route("/sagas", _guarded(pages, pages.sagas)),
        Route("/sagas/{saga}/{key:path}", _guarded(pages, pages.saga)),
        Route("/dlq", _guarded(pages, pages.dead_letters)),
        Route("/dlq/redrive", _guarded(pages, redrives.dry_run)),
        Route("/dlq/{topic}/{partition:int}/{offset:int}", _guarded(pages, pages.dead_letter)),
        Route("/topology", _guarded(pages, pages.topology)),
        Route("/asyncapi.yaml", _guarded(pages, pages.asyncapi)),
        # an editable install (`make install`) links the sheet from outside the package folder
        Mount(
            "/static",
            StaticFiles(packages=[("sagastream.console", "static")], follow_symlink=True),
            name="static",
        ),
    ]
    middleware = [
        Middleware(Limited, limits=reader.settings.http_limits(), writable=actions is not None)
    ]
    if host in LOOPBACK:
        # a page elsewhere cannot reach a loopback console through a name it controls
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK)))
    return Starlette(routes=routes, middleware=middleware)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); UsageError if it cannot be had."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"the console cannot listen on {host}:{port} ({exc.strerror}); give another --port "
            "or set SAGASTREAM_CONSOLE_PORT"
        ) from exc
    sock.listen(128)
    return sock


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve(reader: ConsoleReader, sock: socket.socket, actions: Actions | None = None) -> None:
    """Serve the console on the listening socket until interrupted."""
    import uvicorn

    limits = reader.settings.http_limits()
    config = uvicorn.Config(
        build_app(reader, sock.getsockname()[0], actions),
        log_level="warning",
        limit_concurrency=limits.max_connections,
        timeout_keep_alive=max(1, int(limits.timeout_s)),
        server_header=False,
        proxy_headers=False,
    )
    uvicorn.Server(config).run(sockets=[sock])
