"""Sagas waiting per step, and how long the oldest has waited, over an orchestrator's stores.

A saga waits at a step while the step's command is out and its answer (a handler's result, a
person's signal) has not come: the step is `running`. `sagastream_sagas_waiting{saga,step}`
counts them; `sagastream_saga_oldest_waiting_seconds{saga,step}` is the age of the oldest
wait, computed when Prometheus scrapes.

Kept incrementally: a store's waits are read once when it is restored, then each decision
that changes a saga's waiting steps adds or removes its key; the gauges of the (saga, step)s
it changed follow at `flush`, once per transaction. Within one (partition, saga,
step) keys are kept in the order they began waiting, so the oldest is the first: no scan per
event or per scrape beyond one entry per partition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import Gauge

from sagastream.core.state import STARTED, TERMINAL, SagaState

SagaStep = tuple[str, str]
Wait = tuple[str, str, str, int]  # saga, step, saga key, since (epoch ms)


def waiting_steps(state: SagaState | None) -> frozenset[str]:
    """The steps a saga waits at: those whose command is out and not answered."""
    if state is None or state.status in TERMINAL:
        return frozenset()
    return frozenset(name for name, step in state.steps.items() if step.status == STARTED)


def waits_of(state: SagaState) -> list[Wait]:
    """A restored saga's waits, each since its step's attempt was sent (format 5 states), or
    since the saga's start (earlier formats do not record it)."""
    return [
        (state.saga, s, state.key, _since(state, s, state.started)) for s in waiting_steps(state)
    ]


def _since(state: SagaState, step: str, fallback: int) -> int:
    # a state of format 5 says when its step's current attempt was sent; one of an earlier
    # format does not, and then the saga's start (restore) or the decision's time stands in
    sent = state.steps[step].sent
    return fallback if sent is None else sent


class Waiting:
    """The waits of an orchestrator's stores, by partition, saga and step."""

    def __init__(
        self, count: Gauge, oldest: Gauge, wall_ms: Callable[[], float] | None = None
    ) -> None:
        self._count = count
        self._oldest = oldest
        self._wall_ms = wall_ms or (lambda: time.time() * 1000)
        # partition -> (saga, step) -> {saga key: since (epoch ms)}, oldest first
        self._waits: dict[int, dict[SagaStep, dict[str, int]]] = {}
        self._shown: set[SagaStep] = set()
        self._changed: set[SagaStep] = set()  # by decisions, since the last flush

    def restored(self, partition: int, waits: Iterable[Wait]) -> None:
        """A store's waits (`waits_of` each of its states), read once after its restore."""
        found: dict[SagaStep, list[tuple[int, str]]] = {}
        for saga, step, key, since in waits:
            found.setdefault((saga, step), []).append((since, key))
        self._waits[partition] = {
            pair: {key: since for since, key in sorted(waits)} for pair, waits in found.items()
        }
        self._show(found)

    def decided(
        self, partition: int, old: SagaState | None, new: SagaState | None, now: int
    ) -> None:
        """One decision's change of a saga's waiting steps (after its transaction commits);
        its gauges follow at the next `flush`."""
        before, after = waiting_steps(old), waiting_steps(new)
        waits = self._waits.setdefault(partition, {})
        changed = self._changed
        for step in before - after:
            assert old is not None
            keys = waits.get((old.saga, step), {})
            keys.pop(old.key, None)
            changed.add((old.saga, step))
        for step in after - before:
            assert new is not None
            keys = waits.setdefault((new.saga, step), {})
            keys.pop(new.key, None)  # a key that waits again goes to the end
            keys[new.key] = _since(new, step, now)
            changed.add((new.saga, step))

    def flush(self) -> None:
        """The gauges of what the decisions since the last flush changed."""
        if self._changed:
            self._show(self._changed)
            self._changed = set()

    def dropped(self, partitions: Iterable[int]) -> None:
        """Partitions revoked or lost: their waits are another member's now."""
        changed: set[SagaStep] = set()
        for p in partitions:
            changed.update(self._waits.pop(p, {}))
        self._show(changed)

    def _show(self, pairs: Iterable[SagaStep]) -> None:
        for pair in set(pairs):
            total = sum(len(w.get(pair, ())) for w in self._waits.values())
            if total:
                self._count.labels(*pair).set(total)
                if pair not in self._shown:
                    self._oldest.labels(*pair).set_function(self._age_of(pair))
                    self._shown.add(pair)
            elif pair in self._shown:
                self._count.remove(*pair)
                self._oldest.remove(*pair)
                self._shown.discard(pair)

    def _age_of(self, pair: SagaStep) -> Callable[[], float]:
        def age() -> float:
            firsts = [next(iter(w[pair].values())) for w in self._waits.values() if w.get(pair)]
            return 0.0 if not firsts else max(0.0, (self._wall_ms() - min(firsts)) / 1000)

        return age
