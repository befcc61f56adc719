"""Saga states for the tests of what stores, restores and shows them (not of decide)."""

from __future__ import annotations

from typing import Any

from sagastream.core.state import SagaState, encode_state


def a_state(**fields: Any) -> SagaState:
    """A running order saga's state with no steps, these fields set."""
    base: dict[str, Any] = {
        "saga": "order",
        "key": "o-1",
        "shape": None,
        "status": "running",
        "data": {},
        "steps": {},
        "started": 0,
    }
    return SagaState(**{**base, **fields})


def state_bytes(**fields: Any) -> bytes:
    """The changelog bytes of `a_state(**fields)`."""
    return encode_state(a_state(**fields))
