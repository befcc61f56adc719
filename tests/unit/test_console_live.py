"""The overview refreshes in place: its live part is served alone as a fragment (what
console.js fetches), the page around it loads the console's script and reloads itself only
where no script runs, and the script is served from the package."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import httpx

from sagastream.console.app import REFRESH_S, build_app
from sagastream.console.index import Freshness
from sagastream.console.lag import RoleLag
from sagastream.console.readers import Overview
from sagastream.console.views import Outcome, overview
from sagastream.runtime.settings import Settings

NOW = 1_800_000_000_000


def get(path: str) -> httpx.Response:
    """GET `path` of a console whose reader answers one completed order and two roles' lag."""
    types = overview(["order"], [], [Outcome("order", "SagaCompleted", NOW - 1000)], NOW)
    fresh = Freshness(loaded=True, as_of_ms=NOW, behind=0, records=1, sagas=1)
    lags = [
        RoleLag("orchestrator", "sagastream-orchestrator", 1, 0, 4, 0),
        RoleLag("credit", "sagastream-credit", 0, None, 4, 4),
    ]
    reader = SimpleNamespace(
        settings=Settings(), overview=lambda: Overview(types, [], 0, NOW, fresh), lags=lambda: lags
    )
    app = build_app(reader, "127.0.0.1")  # type: ignore[arg-type] - answers without Kafka

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            return await http.get(path)

    return asyncio.run(send())


def test_the_live_fragment_renders_the_overviews_numbers_charts_and_lag_alone() -> None:
    answer = get("/overview/live")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    part = answer.text
    assert "<html" not in part and "<head" not in part and "<header" not in part
    assert re.search(r'<tr data-saga="order">.*?<td class="completed">1</td>', part, re.S)
    assert '<svg class="rates"' in part
    assert "Index as of" in part  # how fresh the index it comes from is, refreshed with it
    assert '<tr data-role="orchestrator">' in part and '<td class="lag">0</td>' in part
    assert '<td class="lag">no members, never committed</td>' in part


def test_the_page_holds_the_same_part_and_refreshes_it_by_script_else_by_reloading() -> None:
    page = get("/").text
    live = get("/overview/live").text.split("\n", 1)[1]  # past the template's comment line
    assert f'<div class="live" data-fragment="/overview/live" data-refresh="{REFRESH_S}">' in page
    assert live.strip() in page
    assert '<script src="/static/console.js" defer></script>' in page
    # the whole page reloads only where no script runs
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_S}">'
    assert page.count(refresh) == 1 and f"<noscript>{refresh}</noscript>" in page


def test_the_script_is_served_from_the_package() -> None:
    script = get("/static/console.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert 'querySelector("[data-fragment]")' in script.text
