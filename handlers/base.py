"""What every simulated external service shares: latency, seeded failures, idempotency."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sagastream.examples.ledger import IdempotencyLedger

Result = tuple[str, dict[str, Any]]
Operation = Callable[[dict[str, Any], random.Random], Result]


@dataclass(frozen=True)
class Behaviour:
    """How a simulated service behaves: latency per call and the seeded rate of random failures."""

    latency_ms: int = 0
    failure_rate: float = 0.0
    seed: int = 7


class SimulatedService:
    """A stand-in for an external service; subclasses map command types to operations."""

    name = "service"

    def __init__(self, ledger: IdempotencyLedger, behaviour: Behaviour) -> None:
        self.ledger = ledger
        self.behaviour = behaviour
        self.operations: dict[str, Operation] = {}

    def commands(self) -> list[str]:
        return list(self.operations)

    def rng(self, key: str) -> random.Random:
        """Randomness fixed by seed and idempotency key, so a run can be replayed exactly."""
        digest = hashlib.sha256(f"{self.behaviour.seed}:{self.name}:{key}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def injected_failure(self, rng: random.Random) -> bool:
        return rng.random() < self.behaviour.failure_rate

    async def handle(self, command_type: str, record: dict[str, Any]) -> Result:
        """Perform a command once per idempotency key; a repeat returns the first answer."""
        key = record["idempotency_key"]
        known = self.ledger.get(key)
        if known is not None:
            return known
        if self.behaviour.latency_ms:
            await asyncio.sleep(self.behaviour.latency_ms / 1000)
        event_type, fields = self.operations[command_type](record, self.rng(key))
        return self.ledger.put(key, event_type, fields)


def short_id(prefix: str, key: str) -> str:
    """A deterministic id for what an operation created (payment, reservation, shipment)."""
    return f"{prefix}_{hashlib.sha1(key.encode()).hexdigest()[:12]}"
