"""Every worker serves /metrics, /healthz and /readyz on its one HTTP port."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sagastream.ops.demo import WorkerSet


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_worker_is_alive_then_ready_and_serves_its_metrics(ns: Any, tmp_path: Path) -> None:
    port = _free_port()
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    workers.start(["orchestrator,payment"], {"SAGASTREAM_METRICS_PORT": str(port)})
    try:
        deadline = time.monotonic() + 60
        status, body = 0, b""
        while status != 200:
            assert time.monotonic() < deadline, f"never ready: {status} {body!r}"
            workers.check_alive()
            try:
                status, body = _get(port, "/readyz")
            except OSError:
                status = 0  # not listening yet
            time.sleep(0.5)
        assert json.loads(body) == {"ok": True, "roles": {"orchestrator": True, "payment": True}}

        status, body = _get(port, "/healthz")
        assert status == 200 and json.loads(body)["roles"] == {
            "orchestrator": True,
            "payment": True,
        }
        status, body = _get(port, "/metrics")
        assert status == 200 and b'sagastream_worker_up{role="orchestrator,payment"} 1.0' in body
        assert _get(port, "/nothing")[0] == 404
    finally:
        workers.stop()
