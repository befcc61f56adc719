"""States written by earlier releases restore and finish under this one (issue 16).

The demo's order and loan sagas, as ad0bba4 wrote them in format 3 and as formats 1 and 2 kept
them (tests/unit/data/old_states), at every point a saga can be in (started, running, waiting
to retry, compensating, waiting for a person, ended), are put into the namespace's changelog
with the commands they had sent, their times moved to now (as if just written). Then a real
orchestrator restores them and the handlers answer: every saga in flight ends with exactly one
outcome (read_committed), an ended one sends none again, and nothing is dead-lettered.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from sagastream.core.state import STARTED, UNDOING, decode_state
from sagastream.runtime.outputs import Encoder
from sagastream.runtime.store import changelog_headers
from sagastream.wire.codec import SchemaStore, new_meta
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import OUTCOMES, every_dead_letter, lifecycle, wait_outcomes

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "unit" / "data" / "old_states"
KEYS = {"order": "ord-7f3a9c", "loan": "loan-2b81"}
POINTS = {  # the outcome each saga in flight reaches, every step answered and a person approving
    "order-started": "SagaCompleted",
    "order-running": "SagaCompleted",
    "order-waiting-retry": "SagaCompleted",
    "order-compensating": "SagaCompensated",
    "order-ended": None,  # ended before: its outcome was sent then
    "loan-running": "SagaCompleted",
    "loan-waiting-retry": "SagaCompleted",
    "loan-waiting-for-a-person": "SagaCompleted",
    "loan-compensating": "SagaCompensated",
    "loan-ended": None,
}
FILES = {3: "{}.v3", 2: "{}.v2.json", 1: "{}.v1.json"}


def _as_written_now(point: str, version: int, key: str, now: int) -> tuple[bytes, list[Any]]:
    """The state's bytes as the old release wrote them, under `key`, its times moved so that its
    last decision was `now`; and the commands it had sent."""
    old_key = KEYS[point.split("-")[0]]
    sent = json.loads((DATA / f"{point}.commands.json").read_text().replace(old_key, key))
    raw = (DATA / FILES[version].format(point)).read_bytes().replace(old_key.encode(), key.encode())
    prefix, text = (raw[:3], raw[3:]) if version == 3 else (b"", raw)
    body = json.loads(text)
    shift = now - sent["decided_at"]
    for name in ("started", "ended", "expires"):
        if body.get(name) is not None:
            body[name] += shift
    body["timers"] = {timer: due + shift for timer, due in body["timers"].items()}
    # as ad0bba4's encode_state and formats 1 and 2 wrote their JSON
    again = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return prefix + again.encode("utf-8", "surrogatepass"), sent["commands"]


def _outstanding(raw: bytes, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The commands whose answer the state still waits for (their step's current attempt)."""
    steps = decode_state(raw).steps
    waiting = []
    for command in commands:
        step = steps.get(command["step"] or "")
        undo = command["event_type"] in ("RefundPayment", "ReleaseInventory", "CancelShipment",
                                         "ReverseDisbursement")  # fmt: skip
        if step is not None and (
            (undo and step.status == UNDOING and command["attempt"] == step.undo_attempt)
            or (not undo and step.status == STARTED and command["attempt"] == step.attempt)
        ):
            waiting.append(command)
    return waiting


def _approve(ns: Any, key: str) -> None:
    fields = {"saga_type": "loan", "step": "review", "outcome": "approved"}
    ns.client.publish("StepSignal", key, {**fields, "note": "", "decided_by": "test"})


def test_states_of_formats_1_to_3_restore_and_finish(ns: Any, start_workers: Any) -> None:
    now = time.time_ns() // 1_000_000
    producer = Producer(ns.settings.producer_config())
    # the commands as the orchestrator encodes them
    schemas = SchemaStore(ns.settings.schemas_path)
    encoder = Encoder(ns.settings, ns.topology, schemas, ns.client.codec, "sagastream-orchestrator")
    expected: dict[str, str | None] = {}
    for point, outcome in POINTS.items():
        for version in FILES:
            key = f"{KEYS[point.split('-')[0]]}-{point.split('-', 1)[1]}-v{version}"
            raw, sent = _as_written_now(point, version, key, now)
            # headers as the orchestrator writes them
            headers: list[tuple[str, str | bytes | None]] = [*changelog_headers(decode_state(raw))]
            producer.produce(ns.settings.changelog_topic(), raw, key.encode(), headers=headers)
            parent = new_meta("OrderPlaced", key, "sagastream-orchestrator", hop=0)
            for c in _outstanding(raw, sent):
                fields, attempt = c["fields"], c["attempt"]
                out = encoder.derived(
                    c["event_type"], key.encode(), fields, parent, attempt, now, c["step"]
                )
                ns.client.publish_raw(out.topic, out.key, out.value, out.headers)
            if point == "loan-waiting-for-a-person":
                _approve(ns, key)
            expected[key] = outcome
    assert producer.flush(30) == 0
    ns.client.flush()

    start_workers("orchestrator", f"{HANDLERS},credit,documents,disbursement")
    for key in expected:  # those that reach their review now
        if key.startswith(("loan-2b81-running", "loan-2b81-waiting-retry")):
            lifecycle(ns, key, until="step_started", step="review")
            _approve(ns, key)
    ns.client.flush()
    in_flight = {key for key, outcome in expected.items() if outcome is not None}
    found = wait_outcomes(ns, in_flight, timeout=45)
    assert {key: m.event_type for key, m in found.items()} == {k: expected[k] for k in in_flight}

    outcomes = ns.client.read_to_end([ns.topic("sagas.outcomes")])
    counted = Counter(m.key.decode() for m in outcomes if m.key and m.event_type in OUTCOMES)
    assert counted == Counter(in_flight)  # one each; none again for a saga that had ended
    assert every_dead_letter(ns) == []
