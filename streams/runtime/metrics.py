"""Prometheus metrics of one worker, in one object built from a registry that is passed in."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    consumed: Counter
    produced: Counter
    dead_letters: Counter
    outcomes: Counter
    saga_seconds: Histogram
    timers_fired: Counter
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
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
                registry=reg,
            ),
            timers_fired=Counter(
                "sagastream_timers_fired", "Durable timers fired", ["kind"], registry=reg
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
        )
        metrics.up.labels(role).set(1)
        metrics.registry_up.labels(role).set(1)
        return metrics

    def produced_many(self, role: str, event_types: list[str]) -> None:
        """Count a decision's outputs (one call per decision, not per event)."""
        for event_type in event_types:
            self.produced.labels(role, event_type).inc()
