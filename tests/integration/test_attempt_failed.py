"""A failed attempt reported by a handler's runtime (StepAttemptFailed, on the handler role's
produces topic) reaches the orchestrator on the real broker and is retried at once by the step's
policy, long before the step's timeout; its last failure ends the saga with the reason."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.helpers import every_dead_letter, lifecycle, place_order, wait_outcomes

pytestmark = pytest.mark.integration

LONG_MS = 120_000  # no attempt here may end by its timeout: only by the failures reported


@pytest.fixture
def topology_patch():
    def patch(data: dict[str, Any]) -> None:
        steps = data["sagas"]["order"]["steps"]
        steps["payment"].update(
            timeout_ms=LONG_MS, retry={"max_attempts": 2, "initial_backoff_ms": 0}
        )

    return patch


def _charges(ns: Any, count: int) -> list[Any]:
    msgs = ns.client.read([ns.topic("payments.commands")], lambda m: len(m) >= count, 60)
    assert len(msgs) >= count, f"{len(msgs)} ChargePayment of {count}"
    return msgs


def _report(ns: Any, key: str, attempt: int, kind: str) -> None:
    fields = {
        "saga_type": "order",
        "step": "payment",
        "kind": kind,
        "error_type": "ValueError",
        "message": "boom",
        "compensation": False,
    }
    ns.client.deliver("StepAttemptFailed", key, fields, attempt=attempt, step="payment")


def test_a_reported_failure_is_retried_at_once_and_ends_the_saga(ns, start_workers):
    # the test plays the payment handler's runtime. The other steps run in parallel with it and
    # are answered: left to fail by their timeout, the first to end would have been the saga's
    # failed step whenever the test's two reads and reports took longer than that timeout
    start_workers("orchestrator", "inventory,shipping,notification")
    place_order(ns, "order-raised")
    (first,) = _charges(ns, 1)
    assert first.record["meta"]["attempt"] == 1 and first.record["meta"]["step"] == "payment"
    _report(ns, "order-raised", 1, "exception")
    second = _charges(ns, 2)[1]  # within the read's 60 s, half the step's 120 s timeout
    assert second.record["meta"]["attempt"] == 2
    _report(ns, "order-raised", 2, "timeout")

    outcome = wait_outcomes(ns, {"order-raised"}, timeout=60)["order-raised"]
    assert outcome.event_type == "SagaCompensated"
    assert outcome.record["failed_step"] == "payment"
    assert outcome.record["reason"] == ("payment: attempt 2 failed (timeout): ValueError: boom")
    trail = lifecycle(ns, "order-raised", until="compensated")
    assert trail.count(("step_retry_scheduled", "payment")) == 1
    assert every_dead_letter(ns) == []
