"""Prometheus metrics of one worker, in one object built from a registry that is passed in.

Labels stay bounded: saga type, step, result, role, command type, never a saga key. The hot
path takes labelled children from small caches here (`labels()` once per label set).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sagastream.core.spans import AttemptEnded

# saga durations reach days: a saga may wait on people or timers for a week
HOUR, DAY = 3600, 86_400
SAGA_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    HOUR,
    4 * HOUR,
)
SAGA_BUCKETS += (DAY, 3 * DAY, 7 * DAY, 30 * DAY)
HANDLER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

# the decision's lifecycle notes counted by sagastream_step_changes, by the change they are
CHANGE_OF_NOTE = {
    "step_retry_scheduled": "retry",
    "compensation_retry_scheduled": "compensation_retry",
    "step_expired": "timeout",
    "compensating": "compensation",
    "step_compensated": "step_compensated",
    "compensation_failed": "compensation_failed",
    "step_escalated": "escalation",
}
# the notes after which a step's attempts are observed, by its result
RESULT_OF_NOTE = {"step_succeeded": "succeeded", "step_failed": "failed"}


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    consumed: Counter
    produced: Counter
    dead_letters: Counter
    outcomes: Counter
    saga_seconds: Histogram
    timers_fired: Counter
    timer_lateness: Histogram
    up: Gauge
    registry_up: Gauge
    registry_retries: Counter
    transactions: Counter
    commit_seconds: Histogram
    transaction_records: Histogram
    restore_seconds: Gauge
    handler_timeouts: Counter
    attempts_failed: Counter
    handler_polls: Counter
    partitions_waiting: Gauge
    versions_running: Gauge
    sagas_running: Gauge
    step_attempts: Histogram
    step_seconds: Histogram
    step_changes: Counter
    handler_run_seconds: Histogram
    handler_queue_seconds: Histogram
    handler_in_flight: Gauge
    handler_queued: Gauge
    consumer_lag: Gauge
    sagas_waiting: Gauge
    oldest_waiting: Gauge

    @classmethod
    def create(cls, role: str, registry: CollectorRegistry | None = None) -> Metrics:
        reg = registry or CollectorRegistry()
        metrics = cls(
            registry=reg,
            consumed=Counter(
                "sagastream_events_consumed",
                "Events consumed",
                ["role", "event_type"],
                registry=reg,
            ),
            produced=Counter(
                "sagastream_events_produced",
                "Events produced",
                ["role", "event_type"],
                registry=reg,
            ),
            dead_letters=Counter(
                "sagastream_dead_letters",
                "Inputs sent to a DLQ",
                ["role", "topic", "reason"],
                registry=reg,
            ),
            outcomes=Counter(
                "sagastream_saga_outcomes", "Sagas ended", ["saga", "status"], registry=reg
            ),
            saga_seconds=Histogram(
                "sagastream_saga_seconds",
                "Saga duration from start event to terminal state",
                ["saga", "status"],
                buckets=SAGA_BUCKETS,
                registry=reg,
            ),
            timers_fired=Counter(
                "sagastream_timers_fired", "Durable timers fired", ["kind"], registry=reg
            ),
            timer_lateness=Histogram(
                "sagastream_timer_lateness_seconds",
                "How long after its due time a durable timer fired (committed fires only)",
                ["kind"],
                buckets=HANDLER_BUCKETS,
                registry=reg,
            ),
            up=Gauge("sagastream_worker_up", "1 while the worker runs", ["role"], registry=reg),
            registry_up=Gauge(
                "sagastream_registry_up",
                "0 while the schema registry cannot be reached (inputs wait), else 1",
                ["role"],
                registry=reg,
            ),
            registry_retries=Counter(
                "sagastream_registry_retries",
                "Inputs retried because the schema registry could not be reached",
                ["role"],
                registry=reg,
            ),
            transactions=Counter(
                "sagastream_transactions",
                "Orchestrator transactions by result (committed, aborted, failed: session rebuilt)",
                ["result"],
                registry=reg,
            ),
            commit_seconds=Histogram(
                "sagastream_commit_seconds",
                "How long committing one orchestrator transaction took (changelog, offsets, commit)",
                buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5),
                registry=reg,
            ),
            transaction_records=Histogram(
                "sagastream_transaction_records",
                "Records produced in one orchestrator transaction, before the changelog",
                buckets=(1, 10, 100, 1000, 10_000, 100_000),
                registry=reg,
            ),
            restore_seconds=Gauge(
                "sagastream_restore_seconds",
                "How long the last restore of assigned partitions' stores took",
                registry=reg,
            ),
            handler_timeouts=Counter(
                "sagastream_handler_timeouts",
                "Handler attempts abandoned at their run-time bound (reported as timed out)",
                ["role", "command"],
                registry=reg,
            ),
            attempts_failed=Counter(
                "sagastream_handler_attempts_failed",
                "Handler attempts that failed, by kind: exception, timeout, contract, too_large",
                ["role", "command", "kind"],
                registry=reg,
            ),
            handler_polls=Counter(
                "sagastream_handler_polls",
                "Rounds of a handler loop (each polls the consumer and the producer once)",
                ["role"],
                registry=reg,
            ),
            partitions_waiting=Gauge(
                "sagastream_partitions_waiting_for_owner",
                "Input partitions this orchestrator holds but does not process: their store is "
                "owned elsewhere (members disagree on the topology) or partition counts differ",
                registry=reg,
            ),
            versions_running=Gauge(
                "sagastream_saga_versions_running",
                "Saga instances not ended in this orchestrator's stores, by the definition "
                "version and shape they are pinned to",
                ["saga", "version", "shape"],
                registry=reg,
            ),
            sagas_running=Gauge(
                "sagastream_sagas_running",
                "Saga instances not ended in this orchestrator's stores, by saga type and status",
                ["saga", "status"],
                registry=reg,
            ),
            step_attempts=Histogram(
                "sagastream_step_attempts",
                "Attempts a step took, observed when it succeeded or failed for good",
                ["saga", "step", "result"],
                buckets=(1, 2, 3, 5, 10, 20),
                registry=reg,
            ),
            step_seconds=Histogram(
                "sagastream_step_duration_seconds",
                "One attempt of a step (or of its undo, step `<name>:undo`), from its command "
                "decided to its result decided, by result: succeeded, failed, timeout, cancelled",
                ["saga", "step", "result"],
                buckets=SAGA_BUCKETS,
                registry=reg,
            ),
            step_changes=Counter(
                "sagastream_step_changes",
                "Retries, timeouts, compensations and escalations, by saga type and step",
                ["saga", "step", "change"],
                registry=reg,
            ),
            handler_run_seconds=Histogram(
                "sagastream_handler_run_seconds",
                "How long a handler function ran for one command",
                ["role", "command"],
                buckets=HANDLER_BUCKETS,
                registry=reg,
            ),
            handler_queue_seconds=Histogram(
                "sagastream_handler_queue_seconds",
                "From a command's produce time to its handler function's start",
                ["role", "command"],
                buckets=HANDLER_BUCKETS,
                registry=reg,
            ),
            handler_in_flight=Gauge(
                "sagastream_handler_in_flight",
                "Commands whose handler function is running",
                ["role"],
                registry=reg,
            ),
            handler_queued=Gauge(
                "sagastream_handler_queued",
                "Commands taken from Kafka whose function has not started (or whose result "
                "is being sent)",
                ["role"],
                registry=reg,
            ),
            consumer_lag=Gauge(
                "sagastream_consumer_lag",
                "Records of an input partition its consumer group has not processed: the "
                "partition's end minus the group's position (see sagastream.runtime.lag)",
                ["group", "topic", "partition"],
                registry=reg,
            ),
            sagas_waiting=Gauge(
                "sagastream_sagas_waiting",
                "Sagas in this orchestrator's stores waiting at a step: its command is out and "
                "not answered (a handler's result or a person's signal)",
                ["saga", "step"],
                registry=reg,
            ),
            oldest_waiting=Gauge(
                "sagastream_saga_oldest_waiting_seconds",
                "How long the saga that has waited longest at a step has waited",
                ["saga", "step"],
                registry=reg,
            ),
        )
        metrics.up.labels(role).set(1)
        metrics.registry_up.labels(role).set(1)
        return metrics


class Tally:
    """Counter increments gathered over a transaction, then counted once per label set: one
    `inc(n)` each at `flush`, through labelled children looked up once and kept (the labels
    are bounded: roles, event types), instead of `labels().inc()` per event."""

    def __init__(self) -> None:
        self._pending: dict[tuple[Counter, tuple[str, ...]], int] = {}
        self._children: dict[tuple[Counter, tuple[str, ...]], Any] = {}

    def add(self, counter: Counter, *labels: str, n: int = 1) -> None:
        key = (counter, labels)
        self._pending[key] = self._pending.get(key, 0) + n

    def discard(self) -> None:
        """Forget what was added since the last flush: its transaction did not commit, and its
        inputs are read and counted again."""
        self._pending.clear()

    def flush(self) -> None:
        """Count what was added since the last flush."""
        for key, n in self._pending.items():
            child = self._children.get(key)
            if child is None:
                counter, labels = key
                child = self._children[key] = counter.labels(*labels)
            child.inc(n)
        self._pending.clear()


class LifecycleMetrics:
    """Counts a decision's lifecycle notes. Children are looked up once per (saga, step, note)
    and kept, so a decision costs one dict lookup per note."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._changes: dict[tuple[str, str | None, str], Any] = {}
        self._attempts: dict[tuple[str, str | None, str], Any] = {}
        self._durations: dict[tuple[str, str, str], Any] = {}

    def noted(
        self, saga: str, lifecycle: list[tuple[str, str | None]], attempts: Mapping[str, Any]
    ) -> None:
        """Count these notes of one decision of a `saga`; `attempts` is the new state's steps
        (each with the attempt last sent), read for the step a note ends."""
        for what, step in lifecycle:
            key = (saga, step, what)
            child = self._changes.get(key, _UNSEEN)
            if child is _UNSEEN:
                child = self._change_child(key)
            if child is not None:
                child.inc()
                continue
            observe = self._attempts.get(key, _UNSEEN)
            if observe is _UNSEEN:
                observe = self._attempt_child(key)
            if observe is not None and step is not None and step in attempts:
                observe.observe(attempts[step].attempt)

    def _change_child(self, key: tuple[str, str | None, str]) -> Any:
        saga, step, what = key
        change = CHANGE_OF_NOTE.get(what)
        child = None
        if change is not None:
            child = self._metrics.step_changes.labels(saga, step or "", change)
        self._changes[key] = child
        return child

    def ended(self, saga: str, attempts: list[AttemptEnded]) -> None:
        """Observe the attempts one decision ended, each by its decided times."""
        for a in attempts:
            step = f"{a.step}:undo" if a.undo else a.step
            key = (saga, step, a.result)
            child = self._durations.get(key)
            if child is None:
                child = self._durations[key] = self._metrics.step_seconds.labels(*key)
            child.observe((a.end_ms - a.start_ms) / 1000)

    def _attempt_child(self, key: tuple[str, str | None, str]) -> Any:
        saga, step, what = key
        result = RESULT_OF_NOTE.get(what)
        child = None
        if result is not None:
            child = self._metrics.step_attempts.labels(saga, step or "", result)
        self._attempts[key] = child
        return child


_UNSEEN = object()
