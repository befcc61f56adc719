"""Durable timers against the real broker: timeouts with no traffic, retries across a SIGKILL."""

from __future__ import annotations

import time

import pytest

from tests.integration.conftest import HANDLERS
from tests.integration.helpers import (
    every_dead_letter,
    good_order,
    lifecycle,
    place_order,
    wait_outcomes,
)

pytestmark = pytest.mark.integration


def _steps(data, **changes):
    steps = data["sagas"]["order"]["steps"]
    for name, spec in changes.items():
        steps[name].update(spec)


@pytest.fixture
def topology_patch():
    def patch(data):
        _steps(
            data,
            payment={
                "timeout_ms": 1000,
                "schedule_to_close_ms": 1000,  # no handler runs: the orchestrator's own timer
                "retry": {"max_attempts": 2, "initial_backoff_ms": 300, "jitter": "none"},
            },
            inventory={
                "timeout_ms": 6000,
                "schedule_to_close_ms": 6000,
                "retry": {"max_attempts": 1},
            },
            shipping={
                "timeout_ms": 6000,
                "schedule_to_close_ms": 6000,
                "retry": {"max_attempts": 1},
            },
        )

    return patch


@pytest.fixture
def orchestrator_only(start_workers):
    return start_workers("orchestrator")


def test_step_timeout_fires_with_no_other_traffic(ns, orchestrator_only):
    place_order(ns, "order-silent")
    outcome = wait_outcomes(ns, {"order-silent"}, timeout=40)["order-silent"]
    assert outcome.event_type == "SagaCompensated"
    assert outcome.record["failed_step"] == "payment"
    assert "no answer within 1000 ms" in outcome.record["reason"]

    charges = ns.client.read([ns.topic("payments.commands")], lambda m: len(m) >= 2, timeout=10)
    assert [m.record["meta"]["attempt"] for m in charges] == [1, 2]
    assert {m.record["idempotency_key"] for m in charges} == {"order:order-silent:payment"}
    trail = lifecycle(ns, "order-silent", until="compensated")
    assert ("step_retry_scheduled", "payment") in trail
    assert ("step_failed", "payment") in trail
    assert trail[-1] == ("compensated", None)


class TestRetryAcrossCrash:
    @pytest.fixture
    def topology_patch(self):
        def patch(data):
            # attempt 1 times out at once; its 6 s backoff spans the crash; later attempts leave
            # the handlers (started after the retry) a generous window to answer
            retry = {
                "max_attempts": 8,
                "initial_backoff_ms": 6000,
                "max_backoff_ms": 6000,
                "jitter": "none",
            }
            _steps(
                data,
                payment={"timeout_ms": 1000, "schedule_to_close_ms": 1000, "retry": retry},
                inventory={"timeout_ms": 60000},
                shipping={"timeout_ms": 60000},
            )

        return patch

    def test_retry_backoff_survives_a_sigkilled_worker(self, ns, orchestrator_only, start_workers):
        place_order(ns, "order-crash")
        trail = lifecycle(ns, "order-crash", until="step_retry_scheduled", timeout=30)
        assert ("step_retry_scheduled", "payment") in trail
        orchestrator_only.kill("orchestrator")
        killed_at = time.time() * 1000

        # a new process takes over the partitions and their RocksDB state; nothing answers yet
        start_workers("orchestrator")
        # the backoff was armed before the crash; only the new process can have fired it
        _second_charge_after(ns, killed_at)
        start_workers(HANDLERS)
        outcome = wait_outcomes(ns, {"order-crash"}, timeout=60)["order-crash"]
        assert outcome.event_type == "SagaCompleted", outcome.record


def _second_charge_after(ns, killed_at):
    """Wait for the payment's attempt 2 and check it was sent after the kill."""

    def retried(msgs):
        return any(m.record and m.record["meta"]["attempt"] == 2 for m in msgs)

    charges = ns.client.read([ns.topic("payments.commands")], retried, timeout=60)
    retry = next(m for m in charges if m.record and m.record["meta"]["attempt"] == 2)
    assert retry.record["meta"]["occurred_at"] > killed_at


class TestTimeoutAcrossCrash:
    @pytest.fixture
    def topology_patch(self):
        def patch(data):
            retry = {"max_attempts": 3, "initial_backoff_ms": 100, "jitter": "none"}
            _steps(
                data,
                payment={"timeout_ms": 5000, "schedule_to_close_ms": 5000, "retry": retry},
                inventory={"timeout_ms": 60000},
                shipping={"timeout_ms": 60000},
            )

        return patch

    def test_a_step_timeout_armed_before_a_sigkill_fires_after_it(
        self, ns, orchestrator_only, start_workers
    ):
        place_order(ns, "order-timeout-crash")
        # the payment command is out and its 5 s timeout armed; no handler answers
        ns.client.read([ns.topic("payments.commands")], lambda m: len(m) >= 1, timeout=30)
        orchestrator_only.kill("orchestrator")
        killed_at = time.time() * 1000
        start_workers("orchestrator")
        _second_charge_after(ns, killed_at)
        trail = lifecycle(ns, "order-timeout-crash", until="step_retry_scheduled", timeout=10)
        assert ("step_retry_scheduled", "payment") in trail
        start_workers(HANDLERS)
        outcome = wait_outcomes(ns, {"order-timeout-crash"}, timeout=60)["order-timeout-crash"]
        assert outcome.event_type == "SagaCompleted", outcome.record


class TestOrchestratorDownPastATimeout:
    """Time is judged against what has been read: results that came while the orchestrator was
    down, longer than the step's timeout, are decided before that timeout after the restart."""

    ORDERS = 300

    @pytest.fixture
    def topology_patch(self):
        def patch(data):
            # long enough that every charge is out before the first could time out, on a busy
            # machine too; the orchestrator is then down for more than twice as long. Its own
            # timer (schedule_to_close_ms) is what a restart could fire early, so it is the 5 s
            payment = {"timeout_ms": 5000, "schedule_to_close_ms": 5000}
            _steps(data, payment={**payment, "retry": {"max_attempts": 1}})

        return patch

    def test_results_on_the_topic_win_over_timeouts_due_by_the_clock(
        self, ns, orchestrator_only, start_workers
    ):
        keys = {f"down-{i:04d}" for i in range(self.ORDERS)}
        for key in sorted(keys):
            ns.client.publish("OrderPlaced", key, good_order(key))
        ns.client.flush()
        # every charge is out and its 5 s timeout armed; then the orchestrator is gone
        charges = ns.client.read(
            [ns.topic("payments.commands")], lambda m: len(m) >= self.ORDERS, timeout=60
        )
        orchestrator_only.kill("orchestrator")
        down_at = time.monotonic()
        first = min(m.record["meta"]["occurred_at"] for m in charges if m.record)
        print(f"killed {time.time() * 1000 - first:.0f} ms after the first charge (timeout 5000)")
        handlers = start_workers(HANDLERS)
        # every payment is answered while it is down, in time by the records' stamps
        charged = ns.client.read(
            [ns.topic("payments.events")], lambda m: len(m) >= self.ORDERS, timeout=60
        )
        assert {m.key.decode() for m in charged if m.key} == keys
        time.sleep(max(0.0, down_at + 12 - time.monotonic()))  # down well past the timeout
        start_workers("orchestrator")

        outcomes = wait_outcomes(ns, keys, timeout=90)
        handlers.check_alive()
        assert {m.event_type for m in outcomes.values()} == {"SagaCompleted"}, [
            (k, m.event_type, m.record and m.record.get("reason"))
            for k, m in outcomes.items()
            if m.event_type != "SagaCompleted"
        ][:5]
        refunds = [
            m
            for m in ns.client.read_to_end([ns.topic("payments.commands")])
            if m.event_type == "RefundPayment"
        ]
        assert refunds == []
        assert every_dead_letter(ns) == []
