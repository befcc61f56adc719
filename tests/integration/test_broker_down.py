"""Workers started before their broker: they wait, say so, and work once it is up.

The broker here is this test's own (its own ports and data directory), down at first: the
shared one is never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sagastream.local import kafka as localkafka
from sagastream.ops.client import EventClient
from sagastream.ops.demo import WorkerSet
from sagastream.wire.registry import build_codec
from tests.integration.conftest import HANDLERS, Namespace
from tests.integration.helpers import every_dead_letter, free_broker_port, good_order, wait_outcomes

pytestmark = pytest.mark.integration

DOWN_S = 40  # the broker comes up this long after the workers started (main gave up at 30 s)


@pytest.fixture
def own_broker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The bootstrap address of a broker of this test's own, not started yet."""
    port = free_broker_port()
    monkeypatch.setenv(localkafka.ENV_DATA_DIR, str(tmp_path / "kafka"))
    monkeypatch.setenv(localkafka.ENV_PORT, str(port))
    yield f"{localkafka.HOST}:{port}"
    localkafka.stop(log=lambda m: None)


def test_workers_started_before_their_broker_wait_for_it(
    ns: Namespace, own_broker: str, tmp_path: Path
) -> None:
    settings = ns.settings.model_copy(update={"bootstrap_servers": own_broker})
    workers = WorkerSet(settings, tmp_path / "logs")
    workers.start(["orchestrator", HANDLERS])
    try:
        _wait_alive(workers, DOWN_S)
        log = (workers.log_dir / "orchestrator.log").read_text(errors="replace")
        assert f"waiting for the brokers at {own_broker}" in log, log[-2000:]

        assert localkafka.start(log=lambda m: None) == own_broker
        workers.wait_ready(timeout=120)
        client = EventClient(settings, ns.topology, build_codec(settings), "test")
        mine = Namespace(settings, ns.topology, client)
        try:
            keys = {f"late-{i}" for i in range(20)}
            for key in sorted(keys):
                client.publish("OrderPlaced", key, good_order(key))
            client.flush()
            outcomes = wait_outcomes(mine, keys, timeout=90)
            assert {m.event_type for m in outcomes.values()} == {"SagaCompleted"}
            assert every_dead_letter(mine) == []
        finally:
            client.close()
        workers.check_alive()  # neither process ever exited
    finally:
        workers.stop()


def _wait_alive(workers: WorkerSet, seconds: float) -> None:
    """Watch the workers for `seconds`: none may exit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        workers.check_alive()
        time.sleep(1)
