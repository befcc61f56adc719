"""The metrics an operator reads (issue 18, part 3), from real workers' /metrics: sagas running
by saga and status while their commands wait, sagas waiting per step and the age of the oldest
(kept, and found again by a restore), step attempts and compensations once they end,
and a handler's run time, queue time and in-flight gauge."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sagastream.ops.demo import WorkerSet
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import (
    every_dead_letter,
    free_port,
    metric,
    place_order,
    wait_outcomes,
)

GOOD = {f"order-metrics-{n}" for n in range(3)}
DECLINED = {f"order-metrics-declined-{n}" for n in range(2)}


def wait_metric(port: int, name: str, value: float, timeout: float = 30, **labels: str) -> None:
    deadline = time.monotonic() + timeout
    while (seen := metric(port, name, **labels)) != value:
        assert time.monotonic() < deadline, f"{name}{labels} is {seen}, not {value}"
        time.sleep(0.2)


def test_a_worker_shows_running_sagas_step_attempts_compensations_and_handler_times(
    ns: Any, tmp_path: Path
) -> None:
    orchestrator_port, handlers_port = free_port(), free_port()
    workers = WorkerSet(ns.settings, tmp_path / "logs")
    workers.start(["orchestrator"], {"SAGASTREAM_METRICS_PORT": str(orchestrator_port)})
    try:
        workers.wait_ready()
        for key in GOOD:
            place_order(ns, key)
        for key in DECLINED:
            place_order(ns, key, card_token="tok_decline")
        # no handler runs yet: every saga waits on its first step, running
        running = {"saga": "order", "status": "running"}
        wait_metric(orchestrator_port, "sagastream_sagas_running", 5, **running)
        # ... at its payment step, the oldest for some time now
        at_payment = {"saga": "order", "step": "payment"}
        wait_metric(orchestrator_port, "sagastream_sagas_waiting", 5, **at_payment)
        oldest = "sagastream_saga_oldest_waiting_seconds"
        waited = metric(orchestrator_port, oldest, **at_payment)
        assert waited > 0

        # another orchestrator restores the stores: it finds the same waits, as old at least
        workers.terminate("orchestrator")
        orchestrator_port = free_port()
        workers.start(["orchestrator"], {"SAGASTREAM_METRICS_PORT": str(orchestrator_port)})
        workers.wait_ready()
        wait_metric(orchestrator_port, "sagastream_sagas_waiting", 5, **at_payment)
        assert metric(orchestrator_port, oldest, **at_payment) >= waited

        workers.start([HANDLERS], {"SAGASTREAM_METRICS_PORT": str(handlers_port)})
        outcomes = wait_outcomes(ns, GOOD | DECLINED, timeout=90)
        assert {k for k, m in outcomes.items() if m.event_type == "SagaCompleted"} == GOOD
        wait_metric(orchestrator_port, "sagastream_sagas_running", 0, **running)
        # nothing waits any more: the gauges of the payment step are gone
        wait_metric(orchestrator_port, "sagastream_sagas_waiting", 0, **at_payment)
        assert metric(orchestrator_port, oldest, **at_payment) == 0

        paid = {"saga": "order", "step": "payment", "result": "succeeded"}
        assert metric(orchestrator_port, "sagastream_step_attempts_count", **paid) == len(GOOD)
        compensations = {"saga": "order", "step": "payment", "change": "compensation"}
        got = metric(orchestrator_port, "sagastream_step_changes_total", **compensations)
        assert got == len(DECLINED)

        charge = {"role": "payment", "command": "ChargePayment"}
        ran = metric(handlers_port, "sagastream_handler_run_seconds_count", **charge)
        queued = metric(handlers_port, "sagastream_handler_queue_seconds_count", **charge)
        assert ran == queued == len(GOOD | DECLINED)
        # the commands waited for the handlers to start: their queue time shows it
        assert metric(handlers_port, "sagastream_handler_queue_seconds_sum", **charge) > 0
        wait_metric(handlers_port, "sagastream_handler_in_flight", 0, role="payment")
        assert every_dead_letter(ns) == []
        workers.check_alive()
    finally:
        workers.stop()
