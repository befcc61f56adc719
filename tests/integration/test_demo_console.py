"""`sagastream demo --console` (what `make demo` runs) on the real broker: it exits, and its last
lines name a console that is running and shows the run's sagas; `demo --stop` ends that console
and removes the run's topics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sagastream.ops.admin import admin_client
from sagastream.ops.demo import LEFT_RUNNING
from tests.integration.helpers import console_page, free_port, http_get

pytestmark = [pytest.mark.integration, pytest.mark.once]  # the demo command's plumbing

ROOT = Path(__file__).resolve().parents[2]


def demo(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", "demo", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"demo {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_demo_ends_naming_a_running_console_on_its_sagas(
    broker: Any, registry: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGASTREAM_")}
    env |= {
        "SAGASTREAM_BOOTSTRAP_SERVERS": broker.bootstrap,
        "SAGASTREAM_SCHEMA_REGISTRY_URL": registry.url,
        "SAGASTREAM_DATA_DIR": str(tmp_path / "data"),  # the console's log lands there too
        "SAGASTREAM_CONSOLE_PORT": str(port),
    }
    try:
        out = demo(env, "--orders", "5", "--console")
        shown = re.search(r"console: (\S+)  \(this run's sagas, topic prefix (\S+)\)\n", out)
        assert shown is not None, out
        assert shown.group(1) == f"http://127.0.0.1:{port}/"
        assert "stop it: make demo-stop" in out.splitlines()[-1]
        prefix = shown.group(2)
        # a page waits at most 10 s for the new console's index to read the changelog, then
        # shows partial counts: the overview is asked again until its index is whole
        page = console_page(port, "/", lambda text: True)
        row = re.search(r'<tr data-saga="order">(.*?)</tr>', page, re.S)
        assert row is not None and '<td class="started">5</td>' in row.group(1), page[-3000:]
    finally:
        stopped = demo(env, "--stop")
    assert f"removed the run {prefix}" in stopped
    with pytest.raises(OSError):  # the console no longer listens
        http_get(port, "/topology", timeout=5)
    assert not (tmp_path / "data" / LEFT_RUNNING).exists()
    # the broker forgets a deleted topic a moment after it accepted the deletion: asked again
    # (a new client each time: one keeps the metadata it was told) within a bound
    deadline = time.monotonic() + 30
    while left := [t for t in admin_client_topics(broker.bootstrap) if t.startswith(prefix)]:
        assert time.monotonic() < deadline, f"the run's topics are still there: {left}"
        time.sleep(0.2)


def admin_client_topics(bootstrap: str) -> list[str]:
    from sagastream.runtime.settings import Settings

    metadata = admin_client(Settings(bootstrap_servers=bootstrap)).list_topics(timeout=10)
    return list(metadata.topics)
