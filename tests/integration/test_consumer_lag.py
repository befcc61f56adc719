"""sagastream_consumer_lag from real workers: payment commands that wait behind a stuck
handler show as lag on exactly the partitions holding them, and drain to 0 once a working
handler takes over; the orchestrator's inputs drain to 0 too."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sagastream.ops.demo import WorkerSet
from sagastream.runtime.kafka_io import partitions, reader, watermarks
from tests.integration.helpers import every_dead_letter, free_port, http_get, metric, place_order
from tests.integration.test_handler_faults import stuck_env
from tests.integration.test_metrics import wait_metric

# stuck_app never answers a charge of an order whose id starts with "block"
ORDERS = [f"block-lag-{n}" for n in range(6)]
FAST = {"SAGASTREAM_CONSUMER_LAG_INTERVAL_MS": "200"}


def lags(port: int, group: str, topic: str, parts: list[int]) -> dict[int, float | None]:
    """The worker's lag gauge per partition (None: not shown)."""
    got: dict[int, float | None] = {}
    for p in parts:
        labels = {"group": group, "topic": topic, "partition": str(p)}
        got[p] = metric(port, "sagastream_consumer_lag", **labels) if shown(port, labels) else None
    return got


def shown(port: int, labels: dict[str, str]) -> bool:
    text = http_get(port, "/metrics")[1].decode()
    return any(
        s.name == "sagastream_consumer_lag" and s.labels == labels
        for family in text_string_to_metric_families(text)
        for s in family.samples
    )


def wait_lags(port: int, group: str, topic: str, want: dict[int, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (seen := lags(port, group, topic, list(want))) != want:
        assert time.monotonic() < deadline, f"{group} lag on {topic} is {seen}, not {want}"
        time.sleep(0.3)


def test_commands_behind_a_stuck_handler_are_lag_on_their_partitions_then_drain(
    ns: Any, tmp_path: Path
) -> None:
    orchestrator_port, stuck_port, payment_port = free_port(), free_port(), free_port()
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    workers.start(["orchestrator"], {"SAGASTREAM_METRICS_PORT": str(orchestrator_port), **FAST})
    try:
        workers.wait_ready()
        for key in ORDERS:
            place_order(ns, key)
        running = {"saga": "order", "status": "running"}
        deadline = time.monotonic() + 60
        while metric(orchestrator_port, "sagastream_sagas_running", **running) != len(ORDERS):
            assert time.monotonic() < deadline, "the orders were not decided"
            time.sleep(0.2)

        commands = ns.settings.topic("payments.commands")
        consumer = reader(ns.settings, "lag-test")
        try:
            parts = partitions(consumer, commands)
            ends = {p: watermarks(consumer, commands, p) for p in parts}
        finally:
            consumer.close()
        # every command sits in [low, high): lag counts offsets, commit markers included
        want = {p: high - low for p, (low, high) in ends.items()}
        assert sum(1 for n in want.values() if n) >= 2, f"the orders share a partition: {ends}"

        # one handler, one slot: it takes a command, never finishes it, and waits
        env = stuck_env(stuck_port, handler_concurrency="1", drain_timeout_s="1")
        workers.start(["payment"], {**env, **FAST})
        workers.wait_ready()
        group = ns.settings.group("payment")
        wait_lags(stuck_port, group, commands, want)
        # the lag is whole as soon as the handler knows the partitions' ends, before or after
        # it takes its command; the in-flight gauge follows once per round of its loop: awaited
        wait_metric(stuck_port, "sagastream_handler_in_flight", 1, role="payment")

        # a working payment handler takes over: everything drains
        workers.terminate("payment")
        workers.start(["payment"], {"SAGASTREAM_METRICS_PORT": str(payment_port), **FAST})
        workers.wait_ready()
        wait_lags(payment_port, group, commands, dict.fromkeys(parts, 0))

        # the orchestrator read its start events and the payment results to their end
        orchestrator = ns.settings.group("orchestrator")
        for topic in (ns.settings.topic("orders.events"), ns.settings.topic("payments.events")):
            wait_lags(orchestrator_port, orchestrator, topic, dict.fromkeys(parts, 0))
        assert every_dead_letter(ns) == []
        workers.check_alive()
    finally:
        workers.stop()
