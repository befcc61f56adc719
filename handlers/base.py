"""What every simulated service of the demo shares: latency, seeded failures, and a ledger that
gives a repeated command (same idempotency key) its first answer instead of a second effect.

A real service would keep the idempotency key with the effect itself (a unique column, the
payment provider's idempotency header); the ledger stands in for that.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from sagastream.app import Context, Fail
from sagastream.events import Event, model_named
from sagastream.examples.ledger import IdempotencyLedger
from sagastream.runtime.settings import Settings

# how a business failure is kept in the ledger, so a repeat fails the same way
_FAILED = "!fail"

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Behaviour:
    """How a simulated service behaves: latency per call and the seeded rate of random failures."""

    latency_ms: int = 0
    failure_rate: float = 0.0
    seed: int = 7


def ledger_path(settings: Settings, role: str) -> Path:
    """Where the simulated service of a role keeps its idempotency ledger."""
    return settings.data_dir / "external" / f"{settings.topic_prefix}{role}.sqlite"


class SimulatedService:
    """A stand-in for one external service; opened by the worker with its settings."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.behaviour = Behaviour()
        self._path: Path | None = None
        self._ledger: IdempotencyLedger | None = None
        self._lock = threading.Lock()

    def open(self, settings: Settings) -> None:
        """Take the worker's settings; the ledger opens on first use, so a process opens only
        the ledgers of the roles it runs."""
        self.behaviour = Behaviour(
            settings.handler_latency_ms, settings.handler_failure_rate, settings.handler_seed
        )
        self._path = ledger_path(settings, self.role)
        self._ledger = None

    def failed_by_chance(self, rng: random.Random) -> bool:
        return rng.random() < self.behaviour.failure_rate

    async def once(self, ctx: Context, operation: Callable[[random.Random], E]) -> E:
        """Perform an operation once per idempotency key; a repeat gets the first answer."""
        answer = self._opened().get(ctx.idempotency_key)
        if answer is None:
            if self.behaviour.latency_ms:  # a sleep of 0 would still yield, for nothing
                await asyncio.sleep(self.behaviour.latency_ms / 1000)
            answer = self._perform(ctx, operation)
        return cast(E, _replay(answer))

    def once_blocking(self, ctx: Context, operation: Callable[[random.Random], E]) -> E:
        """`once` for a plain function, which runs in the handler loop's thread pool."""
        answer = self._opened().get(ctx.idempotency_key)
        if answer is None:
            if self.behaviour.latency_ms:  # sleep(0) still gives up the GIL: ~20 µs for nothing
                time.sleep(self.behaviour.latency_ms / 1000)
            answer = self._perform(ctx, operation)
        return cast(E, _replay(answer))

    def _perform(
        self, ctx: Context, operation: Callable[[random.Random], Event]
    ) -> tuple[str, dict[str, Any]]:
        """Run it and record the answer; if another process recorded one first, that one wins."""
        try:
            event = operation(self._rng(ctx.idempotency_key))
            answer = type(event).__name__, event.fields()
        except Fail as failed:
            answer = _FAILED, {"reason": failed.reason, "event": failed.event, **failed.fields}
        return self._opened().put(ctx.idempotency_key, *answer)

    def _rng(self, key: str) -> random.Random:
        """Randomness fixed by seed and idempotency key, so a run can be replayed exactly."""
        digest = hashlib.sha256(f"{self.behaviour.seed}:{self.role}:{key}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _opened(self) -> IdempotencyLedger:
        if self._ledger is None:
            with self._lock:  # plain handler functions call in from several threads
                if self._path is None:
                    raise RuntimeError(
                        f"the {self.role} service is not open (App.start was not called)"
                    )
                if self._ledger is None:
                    self._ledger = IdempotencyLedger(self._path)
        return self._ledger


def _replay(answer: tuple[str, dict[str, Any]]) -> Event:
    event_type, fields = answer
    if event_type == _FAILED:
        fields = dict(fields)
        raise Fail(fields.pop("reason"), event=fields.pop("event"), **fields)
    model = model_named(event_type)
    assert issubclass(model, Event)
    return model.model_validate(fields)


def short_id(prefix: str, key: str) -> str:
    """A deterministic id for what an operation created (payment, reservation, shipment)."""
    return f"{prefix}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
