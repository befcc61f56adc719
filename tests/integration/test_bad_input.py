"""Bad bytes go to the DLQ with their reason; a registry that is down makes workers wait instead."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import struct
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sagastream.ops.demo import WorkerSet
from sagastream.wire.codec import new_meta
from sagastream.wire.dlq import read_dead_letter_headers
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import free_port, place_order, wait_outcomes

pytestmark = pytest.mark.integration


def _valid_order(ns: Any, order_id: str) -> bytes:
    record = {
        "meta": new_meta("OrderPlaced", order_id, "test"),
        "order_id": order_id,
        "customer_id": "cust-1",
        "email": "a@example.com",
        "amount_cents": 1299,
        "currency": "EUR",
        "card_token": "tok_visa",
        "items": [{"sku": "SKU-1", "quantity": 1}],
        "shipping_address": "1 Main Street",
    }
    return ns.client.codec.encode("OrderPlaced", record)


def _dead_letters(ns: Any, topic: str, count: int, timeout: float = 30.0) -> list[Any]:
    msgs = ns.client.read([ns.topic(ns.topology.dlq(topic))], lambda m: len(m) >= count, timeout)
    assert len(msgs) >= count, f"expected {count} dead letters on {topic}.dlq, found {len(msgs)}"
    return msgs


def test_each_kind_of_bad_input_is_dead_lettered_with_its_reason(ns: Any, workers: Any) -> None:
    valid = _valid_order(ns, "zzzz-bad")
    failed = {
        "meta": new_meta("PaymentFailed", "bad-undeclared", "test"),
        "order_id": "bad-undeclared",
        "reason": "declined",
    }
    bad = {
        b"bad-unknown-id": (struct.pack(">BI", 0, 2_000_000_000) + valid[5:], "unknown_schema_id"),
        # not a Java int: Apicurio answers 404 with error_code 0, which once froze the worker
        b"bad-huge-id": (struct.pack(">BI", 0, 3_000_000_000) + valid[5:], "unknown_schema_id"),
        b"bad-corrupt": (valid.replace(b"zzzz", b"\xff\xfe\xff\xfe"), "corrupt"),
        b"bad-magic": (b"\x01" + valid[1:], "bad_magic"),
        b"bad-truncated": (valid[: len(valid) // 2], "truncated"),
        # a valid event of a type declared for payments.events, not orders.events
        b"bad-undeclared": (
            ns.client.codec.encode("PaymentFailed", failed),
            "undeclared_event_type",
        ),
    }
    topic = ns.topic("orders.events")
    for key, (value, _) in bad.items():
        ns.client.publish_raw(topic, key, value)
    place_order(ns, "order-after-bad")
    assert wait_outcomes(ns, {"order-after-bad"})["order-after-bad"].event_type == "SagaCompleted"

    letters = {m.key: m for m in _dead_letters(ns, "orders.events", len(bad))}
    assert set(letters) == set(bad)
    for key, (value, reason) in bad.items():
        headers = read_dead_letter_headers(letters[key].headers)
        assert (key, headers["reason"]) == (key, reason), headers["error"]
        assert letters[key].value == value
        assert headers["original.topic"] == topic and headers["error"]


def test_a_keyless_command_is_dead_lettered_not_executed(ns: Any, workers: Any) -> None:
    charge = {
        "meta": new_meta("ChargePayment", "keyless-1", "test"),
        "order_id": "keyless-1",
        "customer_id": "cust-1",
        "amount_cents": 500,
        "currency": "EUR",
        "card_token": "tok_visa",
        "idempotency_key": "order:keyless-1:payment",
    }
    ns.client.publish_raw(
        ns.topic("payments.commands"), None, ns.client.codec.encode("ChargePayment", charge)
    )
    place_order(ns, "order-after-keyless")
    assert (
        wait_outcomes(ns, {"order-after-keyless"})["order-after-keyless"].event_type
        == "SagaCompleted"
    )

    (letter,) = _dead_letters(ns, "payments.commands", 1)
    assert read_dead_letter_headers(letter.headers)["reason"] == "missing_key"
    results = ns.client.read_to_end([ns.topic("payments.events")])
    assert [m for m in results if m.record and m.record["order_id"] == "keyless-1"] == []


# the registry goes away


class RegistryProxy:
    """A TCP forwarder to the schema registry; until started, its port refuses connections."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        # unbound until start(), while the workers retry it: below the ephemeral range
        self.port = free_port()
        self.url = parts._replace(netloc=f"127.0.0.1:{self.port}").geturl()
        self._server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> None:
        target = self.target

        class Forward(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(target) as upstream:
                    back = threading.Thread(
                        target=_pump, args=(upstream, self.request), daemon=True
                    )
                    back.start()
                    _pump(self.request, upstream)
                    back.join()

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Forward)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return None


def test_a_registry_that_is_down_makes_workers_wait_not_dead_letter(
    ns: Any, tmp_path: Path
) -> None:
    proxy = RegistryProxy(str(ns.settings.schema_registry_url))
    settings = ns.settings.model_copy(update={"schema_registry_url": proxy.url})
    metrics_port = free_port()
    ws = WorkerSet(settings, tmp_path / "logs")
    ws.start(["orchestrator"], {"SAGASTREAM_METRICS_PORT": str(metrics_port)})
    ws.start([HANDLERS])
    try:
        ws.wait_ready()
        place_order(ns, "order-registry-down")  # the test's own client still reaches the registry
        deadline = time.monotonic() + 20
        while (_metric(metrics_port, "sagastream_registry_retries_total") or 0) < 3:
            assert time.monotonic() < deadline, "the orchestrator never retried"
            time.sleep(0.5)
        assert _metric(metrics_port, "sagastream_registry_up") == 0
        dlq = ns.topic(ns.topology.dlq("orders.events"))
        assert ns.client.read([dlq], lambda m: True, timeout=2) == []

        proxy.start()
        outcome = wait_outcomes(ns, {"order-registry-down"}, timeout=45)
        assert outcome["order-registry-down"].event_type == "SagaCompleted"
        assert _metric(metrics_port, "sagastream_registry_up") == 1
        assert ns.client.read([dlq], lambda m: True, timeout=1) == []
    finally:
        ws.stop()
        proxy.stop()
