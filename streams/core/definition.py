"""A saga definition's identity: its shape.

Two definitions of one saga have the same shape when an instance started on one can be decided by
the other: the same start event and key, the same steps with the same commands, results,
dependencies, inputs, constants and conditions, and the same compensations. Policies (timeouts,
retries, escalations, maximum waits, the deadline, retention, audit, notifications) are not part
of it: changing them is safe for sagas in flight, which follow the newest policies of their shape.

A saga instance is pinned to the shape it started with (docs/versioning.md).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sagastream.core.topology import CompensationSpec, SagaSpec, StepSpec

SHAPE_CHARS = 12  # hex digits of sha-256 kept: 48 bits, per saga type


def shape_body(spec: SagaSpec) -> dict[str, Any]:
    """What a definition's shape is made of, as plain JSON values."""
    return {
        "start_event": spec.start_event,
        "key_field": spec.key_field,
        "steps": {name: _step(step) for name, step in spec.steps.items()},
    }


def shape_json(spec: SagaSpec) -> str:
    """The shape's canonical JSON: what its identity hashes, and what `topology diff` compares."""
    return json.dumps(shape_body(spec), sort_keys=True, separators=(",", ":"), default=_plain)


def shape_of(spec: SagaSpec) -> str:
    """The shape's identity: the first SHAPE_CHARS hex digits of the sha-256 of its canonical JSON."""
    return hashlib.sha256(shape_json(spec).encode()).hexdigest()[:SHAPE_CHARS]


def _step(step: StepSpec) -> dict[str, Any]:
    return {
        "command": step.command,
        "success": step.success,
        "failure": sorted(step.failure),
        "human": step.human,
        "depends_on": sorted(step.depends_on),
        "optional": step.optional,
        "when": step.when,
        "inputs": _inputs(step.inputs),
        "params": step.params,
        "compensation": None if step.compensation is None else _undo(step.compensation),
    }


def _undo(comp: CompensationSpec) -> dict[str, Any]:
    return {
        "command": comp.command,
        "success": comp.success,
        "failure": sorted(comp.failure),
        "inputs": _inputs(comp.inputs),
        "params": comp.params,
    }


def _inputs(inputs: dict[str, tuple[str, ...] | dict[str, str]]) -> dict[str, Any]:
    return {
        source: dict(fields) if isinstance(fields, dict) else list(fields)
        for source, fields in inputs.items()
    }


def _plain(value: Any) -> Any:
    """A constant param JSON cannot carry (a tuple is a list already): its repr, stably."""
    return repr(value)
