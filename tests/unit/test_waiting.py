"""Sagas waiting per step and the age of the oldest (sagastream.runtime.waiting): read from a
restored store, kept by decisions, dropped with revoked partitions, aged at scrape time."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from sagastream.core.state import SagaState, StepState
from sagastream.runtime.metrics import Metrics
from sagastream.runtime.waiting import Waiting, waits_of

NOW = 1_000_000


def saga(key: str, started: int = 0, status: str = "running", **steps: str) -> SagaState:
    states = {name: StepState(s, 1 if s != "pending" else 0) for name, s in steps.items()}
    return SagaState("order", key, None, status, {"start": {}}, states, started)


def tracked() -> tuple[Metrics, Waiting, list[float]]:
    metrics = Metrics.create("orchestrator", CollectorRegistry())
    clock = [float(NOW)]
    waits = Waiting(metrics.sagas_waiting, metrics.oldest_waiting, lambda: clock[0])
    return metrics, waits, clock


def sample(metrics: Metrics, name: str, step: str) -> Any:
    return metrics.registry.get_sample_value(name, {"saga": "order", "step": step})


def count(metrics: Metrics, step: str) -> Any:
    return sample(metrics, "sagastream_sagas_waiting", step)


def oldest(metrics: Metrics, step: str) -> Any:
    return sample(metrics, "sagastream_saga_oldest_waiting_seconds", step)


def test_a_restored_store_counts_its_waits_and_ages_the_oldest_from_its_start() -> None:
    metrics, waits, clock = tracked()
    states = [
        saga("a", NOW - 5000, payment="running", stock="running"),
        saga("b", NOW - 9000, payment="running", stock="succeeded"),
        saga("c", NOW - 1000, payment="pending"),
    ]
    waits.restored(0, [w for s in states for w in waits_of(s)])
    assert (count(metrics, "payment"), count(metrics, "stock")) == (2, 1)
    assert (oldest(metrics, "payment"), oldest(metrics, "stock")) == (9.0, 5.0)
    clock[0] += 2000  # aged when scraped
    assert oldest(metrics, "payment") == 11.0


def test_decisions_add_and_remove_waits_and_the_oldest_moves_on() -> None:
    metrics, waits, _ = tracked()
    first = saga("a", payment="running")
    waits.decided(0, None, first, NOW - 3000)
    waits.decided(1, None, saga("b", payment="running"), NOW - 1000)
    waits.flush()
    assert (count(metrics, "payment"), oldest(metrics, "payment")) == (2, 3.0)
    # a's payment answered: it waits at shipping now; b is the oldest at payment
    waits.decided(0, first, saga("a", payment="succeeded", shipping="running"), NOW)
    waits.flush()
    assert (count(metrics, "payment"), oldest(metrics, "payment")) == (1, 1.0)
    assert (count(metrics, "shipping"), oldest(metrics, "shipping")) == (1, 0.0)


def test_a_saga_that_ends_or_a_partition_that_goes_leaves_no_wait_behind() -> None:
    metrics, waits, _ = tracked()
    a, b = saga("a", payment="running"), saga("b", payment="running")
    waits.decided(0, None, a, NOW)
    waits.decided(1, None, b, NOW)
    waits.decided(0, a, saga("a", status="failed", payment="failed"), NOW)
    waits.flush()
    assert count(metrics, "payment") == 1
    waits.dropped([1])
    assert (count(metrics, "payment"), oldest(metrics, "payment")) == (None, None)


def test_a_retried_step_waits_again_from_its_new_attempt() -> None:
    metrics, waits, _ = tracked()
    a = saga("a", payment="running")
    waits.decided(0, None, a, NOW - 8000)
    retrying = saga("a", payment="waiting_retry")
    waits.decided(0, a, retrying, NOW - 6000)
    waits.flush()
    assert count(metrics, "payment") is None
    waits.decided(0, retrying, saga("a", payment="running"), NOW - 2000)
    waits.flush()
    assert (count(metrics, "payment"), oldest(metrics, "payment")) == (1, 2.0)


def test_a_state_that_records_when_its_step_was_sent_is_aged_from_then() -> None:
    metrics, waits, _ = tracked()
    state = saga("a", NOW - 60_000, payment="running")
    state.steps["payment"].sent = NOW - 4000
    waits.restored(0, waits_of(state))
    assert oldest(metrics, "payment") == 4.0
