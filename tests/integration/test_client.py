"""The client side on the real broker: `Client.result` and `AsyncClient.result` wait for a saga's
outcome from the outcome topic (read_committed), whether it is written before or after the call;
`AsyncClient` answers what `Client` answers; a signal for a saga key that is not stored is
refused by the client, the CLI and the HTTP API, and nothing is written."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from sagastream.examples.events import OrderPlaced
from sagastream.ops.client import AsyncClient, Client
from sagastream.ops.demo import settings_env
from sagastream.ops.signals import ApiAuth, UnknownSaga, serve
from tests.integration.helpers import API_HEADERS, API_TOKEN, good_order, loan_applied, store_saga

pytestmark = pytest.mark.integration


def test_result_returns_each_outcome_written_after_or_before_the_call(ns, workers) -> None:
    declined = good_order("declined") | {"card_token": "tok_decline"}
    with Client(ns.settings) as client:
        shipped = client.start(OrderPlaced(**good_order("shipped")))
        # called at once: the saga is not even stored yet, its outcome is to come
        completed = client.result("order", shipped, timeout=60)
        refused = client.start(OrderPlaced(**declined))
        compensated = client.result("order", refused, timeout=60)
        # the outcome is written by now: found from the saga's start, not waited for
        again = client.result("order", shipped, timeout=30)
        with pytest.raises(TimeoutError, match="order 'never-started' reached no outcome"):
            client.result("order", "never-started", timeout=1)
        with pytest.raises(ValueError, match="unknown saga 'trip'"):
            client.result("trip", shipped, timeout=1)
    assert type(completed).__name__ == "SagaCompleted" and completed == again
    assert sorted(completed.fields()["completed_steps"]) == ["inventory", "payment", "shipping"]
    assert type(compensated).__name__ == "SagaCompensated"
    assert compensated.fields()["failed_step"] == "payment"


def test_the_async_client_answers_what_the_client_answers(ns, workers) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with AsyncClient(ns.settings) as client:
            key = await client.start(OrderPlaced(**good_order("async-order")))
            outcome = await client.result("order", key, timeout=60)
            listed = await client.list_sagas(["completed"], saga="order")
            view = await client.describe("order", key)
            # a wait given up by its caller: cancelled, it does not hang the loop
            waiting = asyncio.create_task(client.result("order", "never-started"))
            await asyncio.sleep(0.5)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            return key, outcome, listed, view

    key, outcome, listed, view = asyncio.run(scenario())
    with Client(ns.settings) as client:
        assert outcome == client.result("order", key, timeout=30)
        assert listed.sagas == client.list_sagas(["completed"], saga="order").sagas
    assert type(outcome).__name__ == "SagaCompleted"
    assert [s.key for s in listed.sagas] == [key]
    assert view is not None and view.status == "completed"


def test_a_signal_for_a_saga_key_not_stored_is_refused_everywhere(ns) -> None:
    store_saga(ns, "loan", "loan-stored", loan_applied("loan-stored"))
    store_saga(ns, "order", "order-stored", OrderPlaced(**good_order("order-stored")))
    with Client(ns.settings) as client:
        with pytest.raises(UnknownSaga, match="no loan saga with key 'loan-unknown'"):
            client.signal("loan", "loan-unknown", "review", "approved")
        with pytest.raises(UnknownSaga, match="order-stored is the key of a order saga, not"):
            client.signal("loan", "order-stored", "review", "approved")
        client.signal("loan", "loan-stored", "review", "approved")

    cli = [sys.executable, "-m", "sagastream.ops.cli", "signal", "loan", "loan-unknown", "review"]
    done = subprocess.run(
        [*cli, "--outcome", "approved"],
        env={**os.environ, **settings_env(ns.settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "no loan saga with key 'loan-unknown'" in done.stderr and not done.stdout

    server = serve(ns.client, "127.0.0.1", 0, ApiAuth({"bob": API_TOKEN}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        status, body = _post(server.server_address[1], "loan-unknown")
        stored = _post(server.server_address[1], "loan-stored")[0]
    finally:
        server.shutdown()
    assert status == 404 and "no loan saga with key 'loan-unknown'" in body["error"]
    assert stored == 202
    signals = ns.client.read_to_end([ns.topic("sagas.signals")])
    assert [m.key for m in signals] == [b"loan-stored", b"loan-stored"]


def _post(port: int, key: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/sagas/loan/{key}/steps/review/signal"
    request = urllib.request.Request(url, json.dumps({"outcome": "approved"}).encode(), API_HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
