"""A saga's page links its trace in Jaeger's UI when one is configured: the link's address, the
setting that names the UI (else the query API's, on the same port), and no link without one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx

from sagastream.console.app import build_app
from sagastream.core.spans import trace_of
from sagastream.core.topology import load_topology
from sagastream.ops.inspect import build_view
from sagastream.ops.traces import ui_link
from sagastream.runtime.settings import Settings
from sagastream.wire.codec import SchemaStore
from tests.unit.states import a_state

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_link_is_jaegers_trace_page_of_the_trace_id() -> None:
    trace = "0AF7651916CD43DD8448EB211C80319C"
    expected = "http://127.0.0.1:16686/trace/0af7651916cd43dd8448eb211c80319c"
    assert ui_link("http://127.0.0.1:16686", trace) == expected
    assert ui_link("http://127.0.0.1:16686/", trace) == expected
    assert ui_link("https://ops.example/jaeger/", "ab") == "https://ops.example/jaeger/trace/ab"
    assert ui_link(None, trace) is None and ui_link("", trace) is None
    assert ui_link("http://127.0.0.1:16686", None) is None
    assert ui_link("javascript:alert(1)//", trace) is None  # a page links nothing but http(s)


def test_the_ui_is_its_own_setting_else_the_query_apis() -> None:
    assert Settings().traces_ui() is None
    assert Settings(traces_url="http://q:16686").traces_ui() == "http://q:16686"
    both = Settings(traces_url="http://jaeger:16686", traces_ui_url="http://127.0.0.1:16686")
    assert both.traces_ui() == "http://127.0.0.1:16686"


def test_a_sagas_view_carries_its_trace_id() -> None:
    traced = a_state(traceparent=PARENT)
    assert build_view("order", "o-1", 0, traced, []).trace_id == PARENT.split("-")[1]
    untraced = a_state()  # no traceparent: the id derived from the saga, as its spans have
    assert build_view("order", "o-1", 0, untraced, []).trace_id == trace_of(untraced)[0]


def saga_page(settings: Settings) -> str:
    """The page of a running order saga, rendered by the console from a reader's answers."""
    topology = load_topology(settings.topology_file, settings.schemas_path)
    view = build_view("order", "o-1", 0, a_state(traceparent=PARENT, started=1), [])
    reader = SimpleNamespace(
        settings=settings,
        topology=topology,
        schemas=SchemaStore(settings.schemas_path),
        saga=lambda saga, key: view,
        definition=lambda saga, shape: (topology.sagas[saga], None),
    )
    app = build_app(reader, "127.0.0.1")  # type: ignore[arg-type] - answers without Kafka

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get("/sagas/order/o-1")

    answer = asyncio.run(get())
    assert answer.status_code == 200, answer.text
    return answer.text


def test_the_saga_page_links_its_trace_only_when_a_ui_is_configured() -> None:
    linked = saga_page(Settings(traces_ui_url="http://127.0.0.1:16686"))
    href = "http://127.0.0.1:16686/trace/0af7651916cd43dd8448eb211c80319c"
    assert f'<a class="trace" href="{href}" rel="noopener noreferrer">' in linked
    assert 'class="trace"' not in saga_page(Settings())
