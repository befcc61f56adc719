"""States written by earlier releases (tests/unit/data/old_states: the demo's order and loan
sagas as ad0bba4 wrote them in format 3, and as formats 1 and 2 kept them) decode to the right
SagaState, and decide carries each on to exactly one outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sagastream.core.saga import Event, decide
from sagastream.core.state import (
    STARTED,
    TERMINAL,
    UNDOING,
    SagaState,
    decode_head,
    decode_state,
    encode_state,
    head_of,
    seen_digest,
)
from sagastream.core.topology import SIGNAL_EVENT, START, TIMER_EVENT, SagaSpec, load_topology

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data" / "old_states"
OUTCOMES = {"SagaCompleted": "completed", "SagaCompensated": "compensated", "SagaFailed": "failed"}

# per point: the saga's status, its steps' states, its armed timers (kind|step|attempt)
EXPECTED: dict[str, tuple[str, dict[str, str], set[str]]] = {
    "order-started": (
        "running",
        {"payment": "running", "inventory": "running", "shipping": "running"},
        {"deadline||0", "step_timeout|payment|1", "step_timeout|inventory|1",
         "step_timeout|shipping|1"},
    ),
    "order-running": (
        "running",
        {"payment": "succeeded", "inventory": "running", "shipping": "running"},
        {"deadline||0", "step_timeout|inventory|1", "step_timeout|shipping|1"},
    ),
    "order-waiting-retry": (
        "running",
        {"payment": "waiting_retry", "inventory": "running", "shipping": "running"},
        {"deadline||0", "retry|payment|1", "step_timeout|inventory|1", "step_timeout|shipping|1"},
    ),
    "order-compensating": (
        "compensating",
        {"payment": "succeeded", "inventory": "compensating", "shipping": "failed"},
        {"undo_timeout|inventory|1"},
    ),
    "order-ended": (
        "completed",
        {"payment": "succeeded", "inventory": "succeeded", "shipping": "succeeded"},
        set(),
    ),
    "loan-running": (
        "running",
        {"credit_check": "succeeded", "documents": "running", "review": "pending",
         "disbursement": "pending"},
        {"deadline||0", "step_timeout|documents|1"},
    ),
    "loan-waiting-retry": (
        "running",
        {"credit_check": "succeeded", "documents": "waiting_retry", "review": "pending",
         "disbursement": "pending"},
        {"deadline||0", "retry|documents|1"},
    ),
    "loan-waiting-for-a-person": (
        "running",
        {"credit_check": "succeeded", "documents": "succeeded", "review": "running",
         "disbursement": "pending"},
        {"deadline||0", "step_timeout|review|1", "max_wait|review|1"},
    ),
    "loan-compensating": (
        "compensating",
        {"credit_check": "compensated", "documents": "compensated", "review": "compensated",
         "disbursement": "compensating"},
        {"undo_timeout|disbursement|1"},
    ),
    "loan-ended": (
        "compensated",
        {"credit_check": "compensated", "documents": "compensated", "review": "failed",
         "disbursement": "cancelled"},
        set(),
    ),
}  # fmt: skip
FORMATS = {4: "{}.v4", 3: "{}.v3", 2: "{}.v2.json", 1: "{}.v1.json"}
CASES = [(name, version) for name in EXPECTED for version in FORMATS]


@pytest.fixture(scope="module")
def specs() -> dict[str, SagaSpec]:
    return load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas


def _raw(name: str, version: int) -> bytes:
    return (DATA / FORMATS[version].format(name)).read_bytes()


def _written(name: str) -> dict[str, Any]:
    """The state as format 2 kept it: the plain JSON of the in-memory dict of formats 1 to 3."""
    body: dict[str, Any] = json.loads(_raw(name, 2))
    return body


@pytest.mark.parametrize(("name", "version"), CASES)
def test_an_old_state_decodes_to_its_saga_state(
    name: str, version: int, specs: dict[str, SagaSpec]
) -> None:
    raw = _raw(name, version)
    assert raw[:3] == b"SS" + bytes([version]) if version >= 3 else raw[:1] == b"{"
    state, old = decode_state(raw), _written(name)
    status, steps, timers = EXPECTED[name]
    assert (state.saga, state.key, state.status) == (old["saga"], old["key"], status)
    assert {n: s.status for n, s in state.steps.items()} == steps
    assert {n: (s.attempt, s.undo_attempt) for n, s in state.steps.items()} == {
        n: (s["a"], s["ca"]) for n, s in old["steps"].items()
    }
    assert state.timers == old["timers"] and set(state.timers) == timers
    assert (state.order, state.undone, state.undo_errors) == (
        old["order"],
        old["undone"],
        old["undo_errors"],
    )
    assert (state.started, state.ended, state.reason, state.failed_step) == (
        old["started"],
        old["ended"],
        old["reason"],
        old["failed_step"],
    )
    assert (state.correlation_id, state.traceparent) == (old["corr"], old["tp"])
    # fired timers' ids (uuid5) are not kept since format 4; the rest as digests
    inputs = [i for i in old["seen"] if i[14] != "5"]  # a uuid's version digit
    assert state.seen == [seen_digest(i) for i in inputs] and len(inputs) >= 1
    # no shape before format 4 (docs/versioning.md: the lowest published version decides them,
    # though ad0bba4 wrote one); the start's hop from format 3 on
    shape = specs[state.saga].shape if version == 4 else None
    assert (state.shape, state.hop) == (shape, 0 if version >= 3 else None)
    # no step's times before format 5: its spans start with its next attempt
    assert all(
        (s.first_sent, s.sent, s.done, s.undo_sent, s.undo_done) == (None,) * 5
        for s in state.steps.values()
    )
    if version >= 3:
        assert state.data == old["data"]  # the items, records inside a list, untagged
    if version == 2:
        assert state.data == old["data"] and state.expires == old["expires"]
    if version == 1:  # one merged context, read by every source
        merged = {k: v for source in old["data"].values() for k, v in source.items()}
        assert set(state.data) == {START, *old["order"]}
        assert all(fields == merged for fields in state.data.values())
        assert state.expires is None


@pytest.mark.parametrize(("name", "version"), CASES)
def test_an_old_states_head_is_what_its_whole_decoding_shows(name: str, version: int) -> None:
    """`decode_head` (saga list, the console's index) reads each format as `decode_state` does,
    and again from the state carried on to format 5."""
    state = decode_state(_raw(name, version))
    running = tuple(n for n, s in EXPECTED[name][1].items() if s == STARTED)
    assert decode_head(_raw(name, version)) == head_of(state)
    assert decode_head(encode_state(state)) == head_of(state)
    assert head_of(state).running == running


@pytest.mark.parametrize(("name", "version"), CASES)
def test_an_old_state_is_decided_on_to_exactly_one_outcome(
    name: str, version: int, specs: dict[str, SagaSpec]
) -> None:
    state = decode_state(_raw(name, version))
    definition = (state.saga, specs[state.saga])
    # an event it decided before is still known for one: decide compares the digests
    last_input = next(i for i in reversed(_written(name)["seen"]) if i[14] == "4")
    again = Event("Anything", last_input, {})
    assert decide(definition, state, again, state.started + 1).duplicate
    if state.status in TERMINAL:
        return  # its outcome went out when it ended (the ended point of each saga)
    # every step answered with success and the person approving: what was compensating ends
    # compensated, the rest completes
    expected = "compensated" if state.status == "compensating" else "completed"
    assert _carry_on(definition, state) == [expected]


def _carry_on(definition: tuple[str, SagaSpec], state: SagaState) -> list[str]:
    """Answer every step that waits (a person approves), fire timers when nothing else is left,
    until the saga ends; every outcome it sent on the way, and stored as format 5."""
    _, spec = definition
    outcomes: list[str] = []
    now, n = state.started, 0
    while state.status not in TERMINAL:
        n += 1
        assert n < 50, f"no end after 50 events: {state}"
        now += 10
        event = _next_input(spec, state, f"carry-{n}")
        if event.event_type == TIMER_EVENT:
            now = max(now, event.fields["due_ms"])
        decision = decide(definition, state, event, now)
        assert decision.dead_letter is None or "failed:" in decision.dead_letter, decision
        outcomes += [OUTCOMES[c.event_type] for c in decision.commands if c.event_type in OUTCOMES]
        if decision.state is not None:
            state = decode_state(encode_state(decision.state))
    return outcomes


def _next_input(spec: SagaSpec, state: SagaState, event_id: str) -> Event:
    for name, step in state.steps.items():
        step_spec = spec.steps[name]
        if step.status == STARTED and step_spec.human:
            signal = {"saga_type": state.saga, "step": name, "outcome": "approved"}
            return Event(SIGNAL_EVENT, event_id, {**signal, "decided_by": "test"})
        if step.status == STARTED and step_spec.success is not None:
            return Event(step_spec.success, event_id, {}, attempt=step.attempt, step=name)
        if step.status == UNDOING and step_spec.compensation is not None:
            success = step_spec.compensation.success
            return Event(success, event_id, {}, attempt=step.undo_attempt, step=name)
    timer, due = min(state.timers.items(), key=lambda kv: kv[1])
    kind, step_name, attempt = timer.split("|")
    fields = {"kind": kind, "step": step_name, "attempt": int(attempt), "due_ms": due}
    return Event(TIMER_EVENT, event_id, fields)


def test_format_4_is_smaller_than_format_3(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo order saga's state just started and completed, in both formats (printed)."""
    for name in ("order-started", "order-ended"):
        old, new = _raw(name, 3), _raw(name, 4)
        with capsys.disabled():
            print(f"\n{name}: format 3 {len(old)} bytes, format 4 {len(new)} bytes")
        assert len(new) < len(old)
        assert decode_state(new).steps == decode_state(old).steps


def test_format_5_adds_little_to_format_4(
    specs: dict[str, SagaSpec], capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo order saga run to its two points again, now keeping its steps' times: what the
    times cost over the same state in format 4 (printed; the rest of the bytes are equal)."""
    definition = ("order", specs["order"])
    order = json.loads(_raw("order-started", 2))["data"][START]
    start = Event("OrderPlaced", "start-1", order, traceparent=None)
    t0 = 1764547200000
    started = decide(definition, None, start, t0).state
    assert started is not None
    ended = started
    for n, (name, step) in enumerate(started.steps.items(), 1):
        answer = Event(specs["order"].steps[name].success or "", f"ok-{n}", {}, step=name)
        decided = decide(definition, ended, answer, t0 + 100 * n).state
        assert decided is not None and step.sent == t0
        ended = decided
    assert ended.status == "completed"
    assert [ended.steps[n].done for n in ended.steps] == [t0 + 100, t0 + 200, t0 + 300]
    for name, state in (("order-started", started), ("order-ended", ended)):
        five = encode_state(state)
        four = _without_times(state)
        with capsys.disabled():
            print(f"\n{name}: format 4 {len(four)} bytes, format 5 {len(five)} bytes")
        assert decode_state(five) == state and five[:3] == b"SS\x05"
        assert len(five) - len(four) <= 8 * len(state.steps)


def _without_times(state: SagaState) -> bytes:
    bare = state.copy()
    for step in bare.steps.values():
        step.first_sent = step.sent = step.done = step.undo_sent = step.undo_done = None
    return encode_state(bare)
