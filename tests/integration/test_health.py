"""Every worker serves /metrics, /healthz and /readyz on its one HTTP port."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka.admin import NewTopic

from sagastream.ops.admin import admin_client, delete_topics
from sagastream.ops.demo import WorkerSet
from tests.integration.helpers import free_port, http_get


def test_a_worker_is_alive_then_ready_and_serves_its_metrics(ns: Any, tmp_path: Path) -> None:
    port = free_port()
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    workers.start(["orchestrator,payment"], {"SAGASTREAM_METRICS_PORT": str(port)})
    try:
        deadline = time.monotonic() + 60
        status, body = 0, b""
        while status != 200:
            assert time.monotonic() < deadline, f"never ready: {status} {body!r}"
            workers.check_alive()
            try:
                status, body = http_get(port, "/readyz")
            except OSError:
                status = 0  # not listening yet
            time.sleep(0.5)
        assert json.loads(body) == {"ok": True, "roles": {"orchestrator": True, "payment": True}}

        status, body = http_get(port, "/healthz")
        assert status == 200 and json.loads(body)["roles"] == {
            "orchestrator": True,
            "payment": True,
        }
        status, body = http_get(port, "/metrics")
        assert status == 200 and b'sagastream_worker_up{role="orchestrator,payment"} 1.0' in body
        assert http_get(port, "/nothing")[0] == 404
    finally:
        workers.stop()


def test_an_orchestrator_whose_input_topic_is_gone_is_not_ready_and_says_why(
    ns: Any, tmp_path: Path
) -> None:
    # it reads its inputs from topics of their own, and one of them was never created
    inputs = f"t{uuid.uuid4().hex[:10]}-"
    missing = f"{inputs}loans.events"
    there = [
        NewTopic(f"{inputs}{topic}", ns.topology.partitions(topic), 1)
        for topic in ns.topology.orchestrator_inputs()
        if f"{inputs}{topic}" != missing
    ]
    admin = admin_client(ns.settings)
    for future in admin.create_topics(there).values():
        future.result(30)
    port = free_port()
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    env = {"SAGASTREAM_METRICS_PORT": str(port), "SAGASTREAM_INPUT_PREFIX": inputs}
    workers.start(["orchestrator"], env)
    try:
        workers.wait_ready()
        deadline = time.monotonic() + 30
        while (answer := json.loads(http_get(port, "/readyz")[1])).get("ok", True):
            assert time.monotonic() < deadline, f"still ready: {answer}"
            time.sleep(0.5)
        assert http_get(port, "/readyz")[0] == 503
        # (other reasons may stand beside it, e.g. the stores' owner waiting for that topic)
        reasons = answer["reasons"]["orchestrator"]
        assert [
            r
            for r in reasons
            if r.startswith(f"input {missing} cannot be read: ")
            and "Unknown topic or partition" in r
        ], reasons
        assert http_get(port, "/healthz")[0] == 200  # alive: a restart would not help
    finally:
        workers.stop()
        delete_topics(ns.settings, inputs)
