"""The metrics an operator reads (issue 18, part 3), on a CollectorRegistry of their own:
lifecycle notes counted by change and step attempts by result, saga durations of days, and a
handler's run time, queue time and in-flight gauge."""

from __future__ import annotations

import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sagastream.core.state import StepState
from sagastream.runtime.metrics import CHANGE_OF_NOTE, LifecycleMetrics, Metrics, Tally
from tests.unit.test_handler_loop import FakeConsumer, charge, charged, eventually, running


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_lifecycle_notes_count_retries_timeouts_compensations_and_escalations_by_step():
    metrics = Metrics.create("orchestrator", CollectorRegistry())
    counted = LifecycleMetrics(metrics)
    steps = {"payment": StepState("waiting_retry", 1), "stock": StepState("running", 1)}
    counted.noted("order", [("step_started", "stock"), ("step_retry_scheduled", "payment")], steps)
    counted.noted("order", [("step_retry_scheduled", "payment")], steps)
    counted.noted("order", [("step_expired", "stock"), ("step_escalated", "stock")], steps)
    counted.noted("order", [("compensating", "payment"), ("step_compensated", "stock")], steps)
    changes = "sagastream_step_changes_total"
    assert value(metrics, changes, saga="order", step="payment", change="retry") == 2
    assert value(metrics, changes, saga="order", step="stock", change="timeout") == 1
    assert value(metrics, changes, saga="order", step="stock", change="escalation") == 1
    assert value(metrics, changes, saga="order", step="payment", change="compensation") == 1
    assert value(metrics, changes, saga="order", step="stock", change="step_compensated") == 1
    # a step that starts is no change an operator counts
    assert value(metrics, changes, saga="order", step="stock", change="step_started") is None


def test_a_step_that_ends_observes_its_attempts_by_result():
    metrics = Metrics.create("orchestrator", CollectorRegistry())
    counted = LifecycleMetrics(metrics)
    counted.noted("order", [("step_succeeded", "payment")], {"payment": StepState("succeeded", 3)})
    counted.noted("order", [("step_failed", "stock")], {"stock": StepState("failed", 1)})
    attempts = "sagastream_step_attempts"
    ok = {"saga": "order", "step": "payment", "result": "succeeded"}
    assert value(metrics, f"{attempts}_sum", **ok) == 3
    assert value(metrics, f"{attempts}_bucket", **ok, le="2.0") == 0
    assert value(metrics, f"{attempts}_bucket", **ok, le="3.0") == 1
    failed = {"saga": "order", "step": "stock", "result": "failed"}
    assert value(metrics, f"{attempts}_count", **failed) == 1


def test_a_tally_counts_once_per_label_set_when_flushed(monkeypatch: Any) -> None:
    metrics = Metrics.create("orchestrator", CollectorRegistry())
    looked_up: list[tuple[str, ...]] = []
    real = metrics.consumed.labels
    monkeypatch.setattr(metrics.consumed, "labels", lambda *ls: looked_up.append(ls) or real(*ls))
    tally = Tally()
    for event_type in ["OrderPlaced", "PaymentCharged", "OrderPlaced"]:
        tally.add(metrics.consumed, "orchestrator", event_type)
    tally.add(metrics.produced, "orchestrator", "SagaLifecycle", n=5)

    def consumed(event_type: str) -> Any:
        labels = {"role": "orchestrator", "event_type": event_type}
        return metrics.registry.get_sample_value("sagastream_events_consumed_total", labels)

    assert consumed("OrderPlaced") is None  # nothing counted before the flush
    tally.flush()
    tally.add(metrics.consumed, "orchestrator", "OrderPlaced")
    tally.flush()
    tally.flush()  # nothing added since: nothing counted twice
    assert (consumed("OrderPlaced"), consumed("PaymentCharged")) == (3, 1)
    labels = {"role": "orchestrator", "event_type": "SagaLifecycle"}
    assert metrics.registry.get_sample_value("sagastream_events_produced_total", labels) == 5
    # the labelled children are looked up once per label set, not per event or per flush
    assert sorted(looked_up) == [
        ("orchestrator", "OrderPlaced"),
        ("orchestrator", "PaymentCharged"),
    ]


def test_saga_durations_are_told_apart_up_to_weeks():
    metrics = Metrics.create("orchestrator", CollectorRegistry())
    two_days = 2 * 86_400
    metrics.saga_seconds.labels("loan", "completed").observe(two_days)
    bucket = "sagastream_saga_seconds_bucket"
    labels = {"saga": "loan", "status": "completed"}
    assert value(metrics, bucket, **labels, le="86400.0") == 0
    assert value(metrics, bucket, **labels, le="259200.0") == 1


def test_a_handler_shows_its_running_command_then_its_run_and_queue_time():
    consumer = FakeConsumer()
    consumer.append(0, b"o-1", charge("o-1"))
    release = threading.Event()

    def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        release.wait(5)
        return charged(record["order_id"])

    with running(call, consumer=consumer) as loop:
        metrics: Metrics = loop._metrics
        gauge = {"role": "payment"}
        eventually(lambda: value(metrics, "sagastream_handler_in_flight", **gauge) == 1)
        assert value(metrics, "sagastream_handler_queued", **gauge) == 0
        time.sleep(0.05)
        release.set()
        eventually(lambda: value(metrics, "sagastream_handler_in_flight", **gauge) == 0)
        eventually(lambda: consumer.committed(0) == 1)
    by_command = {"role": "payment", "command": "ChargePayment"}
    assert value(metrics, "sagastream_handler_run_seconds_count", **by_command) == 1
    ran = value(metrics, "sagastream_handler_run_seconds_sum", **by_command)
    assert ran is not None and ran >= 0.05  # it ran at least while it was held
    # the fake message was produced in 2023: its queue time is that old
    queued = value(metrics, "sagastream_handler_queue_seconds_sum", **by_command)
    assert queued is not None and queued > 86_400


def test_a_handler_counts_each_command_and_result_type_under_its_own_labels():
    consumer = FakeConsumer(partitions=1)
    for order in ("o-1", "o-2", "bad", "o-3"):
        consumer.append(0, order.encode(), charge(order))
    consumer.append(0, b"r-1", charge("r-1", command="RefundPayment"))  # not this loop's

    async def call(command_type: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        if record["order_id"] == "bad":
            raise RuntimeError("gateway exploded")
        return charged(record["order_id"])

    with running(call, consumer=consumer) as loop:
        eventually(lambda: consumer.committed(0) == 5)
    metrics: Metrics = loop._metrics
    consumed = "sagastream_events_consumed_total"
    assert value(metrics, consumed, role="payment", event_type="ChargePayment") == 4
    assert value(metrics, consumed, role="payment", event_type="RefundPayment") == 1
    produced = "sagastream_events_produced_total"
    assert value(metrics, produced, role="payment", event_type="PaymentCharged") == 3
    assert value(metrics, produced, role="payment", event_type="StepAttemptFailed") == 1
    ran = "sagastream_handler_run_seconds_count"
    assert value(metrics, ran, role="payment", command="ChargePayment") == 4
    assert value(metrics, ran, role="payment", command="RefundPayment") is None


def test_every_metric_with_its_labels_and_every_change_is_in_the_readme_metrics_table():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("### Metrics\n", 1)[1].split("\n\n", 2)[1]
    # | `name` | type | labels | meaning |
    rows = [[cell.strip() for cell in line.split("|")[1:4]] for line in table.splitlines()[2:]]
    documented = {name.strip("`"): labels for name, _, labels in rows}
    metrics = Metrics.create("any", CollectorRegistry())
    shown = {}
    for f in fields(Metrics):
        metric = getattr(metrics, f.name)
        if f.name != "registry":
            suffix = "_total" if metric._type == "counter" else ""
            shown[metric._name + suffix] = ", ".join(metric._labelnames)
    assert documented == shown, "README.md's Observability metrics table differs from metrics.py"
    changes = next(r for r in table.splitlines() if r.startswith("| `sagastream_step_changes"))
    assert all(f"`{change}`" in changes for change in CHANGE_OF_NOTE.values())
