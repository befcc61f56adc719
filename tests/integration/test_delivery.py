"""Acknowledged means written: every publish (client, CLI, HTTP API, redrive) reports the broker's
answer. The broker is made to refuse writes to one topic by lowering its `max.message.bytes`
below any record (it answers MESSAGE_TOO_LARGE), and each publisher must say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from sagastream.examples.events import OrderPlaced
from sagastream.ops import cli
from sagastream.ops.admin import admin_client
from sagastream.ops.client import Client
from sagastream.ops.demo import settings_env
from sagastream.ops.signals import ApiAuth, serve
from sagastream.runtime.kafka_io import DeliveryFailed
from sagastream.wire.codec import new_meta
from sagastream.wire.dlq import Origin, dead_letter_headers
from tests.integration.helpers import API_HEADERS, API_TOKEN, good_order, loan_applied, store_saga

pytestmark = pytest.mark.integration

REFUSED = "MSG_SIZE_TOO_LARGE"
PROBE = b"probe"


@pytest.fixture
def refuse(ns: Any) -> Callable[[str], None]:
    """Make the broker refuse every record written to a topology topic from now on."""

    def apply(topic: str) -> None:
        entry = ConfigEntry("max.message.bytes", "1", incremental_operation=AlterConfigOpType.SET)
        resource = ConfigResource(
            ConfigResource.Type.TOPIC, ns.topic(topic), incremental_configs=[entry]
        )
        admin = admin_client(ns.settings)
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(30)
        _until_refused(ns, topic)

    return apply


def _until_refused(ns: Any, topic: str) -> None:
    """The broker applies a config change a moment after it accepted it: probe every partition
    until each refuses."""
    probe = Producer(ns.settings.producer_config())
    deadline = time.monotonic() + 30
    while True:
        answers: list[KafkaError | None] = []
        for partition in range(ns.topology.partitions(topic)):
            probe.produce(
                ns.topic(topic),
                b"x" * 64,
                PROBE,
                partition=partition,
                on_delivery=lambda err, _msg, into=answers: into.append(err),
            )
        probe.flush(30)
        if all(e is not None and e.code() == KafkaError.MSG_SIZE_TOO_LARGE for e in answers):
            return
        assert time.monotonic() < deadline, f"{ns.topic(topic)} still takes records: {answers}"
        time.sleep(0.2)


def _keys(ns: Any, topic: str) -> list[bytes | None]:
    """The keys written to a topology topic, probes aside."""
    return [m.key for m in ns.client.read_to_end([ns.topic(topic)]) if m.key != PROBE]


def test_client_start_raises_when_the_broker_refuses_the_start_event(ns, refuse) -> None:
    with Client(ns.settings) as client:
        assert client.start(OrderPlaced(**good_order("written"))) == "written"
        refuse("orders.events")
        with pytest.raises(DeliveryFailed) as refused:
            client.start(OrderPlaced(**good_order("refused")))
    message = str(refused.value)
    assert REFUSED in message and ns.topic("orders.events") in message and "'refused'" in message
    assert _keys(ns, "orders.events") == [b"written"]


def test_client_close_reports_a_refused_start_it_did_not_wait_for(ns, refuse) -> None:
    refuse("orders.events")
    client = Client(ns.settings)
    client.start(OrderPlaced(**good_order("unwaited")), wait=False)
    with pytest.raises(DeliveryFailed, match=REFUSED):
        client.close()
    assert _keys(ns, "orders.events") == []


def test_signal_cli_exits_1_and_says_why_when_the_broker_refuses(ns, refuse) -> None:
    store_saga(ns, "loan", "loan-1", loan_applied("loan-1"))
    refuse("sagas.signals")
    done = subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", "signal", "loan", "loan-1", "review"]
        + ["--outcome", "approved", "--by", "ann"],
        env={**os.environ, **settings_env(ns.settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "sagastream signal:" in done.stderr and REFUSED in done.stderr
    assert ns.topic("sagas.signals") in done.stderr and "written" not in done.stdout
    assert _keys(ns, "sagas.signals") == []


def test_signals_api_answers_502_when_the_broker_refuses(ns, refuse) -> None:
    for key in ("loan-ok", "loan-refused"):
        store_saga(ns, "loan", key, loan_applied(key))
    server = serve(ns.client, "127.0.0.1", 0, ApiAuth({"bob": API_TOKEN}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/sagas/loan"

    def post(key: str) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"outcome": "approved"}).encode()
        request = urllib.request.Request(
            f"{base}/{key}/steps/review/signal", body, API_HEADERS, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        assert post("loan-ok")[0] == 202
        refuse("sagas.signals")
        status, body = post("loan-refused")
    finally:
        server.shutdown()
    assert status == 502 and REFUSED in body["error"], (status, body)
    assert _keys(ns, "sagas.signals") == [b"loan-ok"]


def test_dlq_redrive_execute_exits_1_and_names_what_the_broker_refused(
    ns, refuse, monkeypatch, capsys
) -> None:
    record = good_order("order-back")
    record["meta"] = new_meta("OrderPlaced", "order-back", "test")
    headers = dead_letter_headers(
        Origin(ns.topic("orders.events"), 0, 0), "unknown_schema_id", "gone", "test"
    )
    ns.client.publish_raw(
        ns.topic("orders.events.dlq"),
        b"order-back",
        ns.client.codec.encode("OrderPlaced", record),
        headers,
    )
    ns.client.flush()
    refuse("orders.events")
    for name, value in settings_env(ns.settings).items():
        monkeypatch.setenv(name, value)

    code = cli.main(["dlq", "redrive", "--execute"])

    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert "NOT redriven orders.events.dlq[" in out and REFUSED in out
    assert "redrove 0 dead letters, refused 0" in out
    assert "did not write 1 redriven dead letters" in err
    assert _keys(ns, "orders.events") == []
