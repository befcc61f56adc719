"""The span model (sagastream.core.spans) without a broker: on the test kit (the seeds'
notification fan-out, tests/scenarios/notify), on decide alone (the order saga compensating),
and the critical path of hand-made step times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sagastream.core.saga import Event, decide
from sagastream.core.spans import (
    Span,
    attempts_ended,
    command_traceparent,
    critical_path,
    decision_spans,
    span_id,
)
from sagastream.core.state import SagaState, StepState
from sagastream.core.topology import TIMER_EVENT, SagaSpec, load_topology
from sagastream.runtime.metrics import LifecycleMetrics, Metrics
from sagastream.testing import SagaTest
from tests.scenarios.notify.app import NoticeRequested, write_project

ROOT = Path(__file__).resolve().parents[2]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
START_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def notify(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("notify"))


@pytest.fixture(scope="module")
def order() -> tuple[str, SagaSpec]:
    return "order", load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas["order"]


def _kit(topology: Path, **notice: Any) -> tuple[SagaTest, str]:
    kit = SagaTest.load(topology)
    key = kit.start(NoticeRequested(notice_id="n-1", **notice))
    kit.run()
    return kit, key


def _by_name(spans: list[Span]) -> dict[str, list[Span]]:
    out: dict[str, list[Span]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


# -- the notification fan-out on the kit -----------------------------------------------------------


def test_a_fan_out_is_three_sibling_step_spans_under_the_saga_span(notify: Path) -> None:
    kit, key = _kit(notify)
    assert kit.status(key) == "completed"
    spans = kit.spans(key)
    saga = spans[-1]
    assert (saga.name, saga.kind, saga.parent_id) == ("saga notice", "saga", None)
    steps = {s.name: s for s in spans if s.kind == "attempt"}
    assert set(steps) == {"step email", "step sms", "step push"}
    assert {s.parent_id for s in steps.values()} == {saga.span_id}
    assert {s.trace_id for s in spans} == {saga.trace_id}
    took = {name: s.end_ms - s.start_ms for name, s in steps.items()}
    assert took == {"step email": 2000, "step sms": 500, "step push": 1000}
    # parallel: the saga lasts the longest branch, not the sum (3.5 s)
    assert saga.end_ms - saga.start_ms == 2000
    assert saga.attributes["saga.critical_path"] == ["email"]
    slack = {k: v for k, v in saga.attributes.items() if k.startswith("saga.slack_ms.")}
    assert slack == {
        "saga.slack_ms.email": 0,
        "saga.slack_ms.sms": 1500,
        "saga.slack_ms.push": 1000,
    }
    assert saga.attributes["saga.outcome"] == "completed" and saga.error is None
    email = steps["step email"].attributes
    assert email["saga.idempotency_key"] == "notice:n-1:email"
    assert (email["saga.attempt"], email["saga.outcome"]) == (1, "succeeded")
    assert email["messaging.destination.name"] == "notices.commands"
    assert email["messaging.system"] == "kafka"
    # the `when:` that let the push go, with the value it read
    (when,) = steps["step push"].events
    assert when.attributes == {"when": "start.has_app", "result": True, "when.start.has_app": True}


def test_each_command_carries_its_attempt_span_as_parent(notify: Path) -> None:
    kit, key = _kit(notify)
    ids = {s.attributes["saga.step"]: s.span_id for s in kit.spans(key) if s.kind == "attempt"}
    for command in kit.commands(key):
        _, trace, parent, _ = command.meta["traceparent"].split("-")
        assert (trace, parent) == (kit.spans(key)[-1].trace_id, ids[command.step])


def test_a_when_that_skips_a_step_is_an_instant_with_the_values_it_saw(notify: Path) -> None:
    kit, key = _kit(notify, has_app=False)
    skips = [s for s in kit.spans(key) if s.kind == "instant"]
    assert [s.name for s in skips] == ["skip push"]
    (when,) = skips[0].events
    assert when.attributes == {
        "when": "start.has_app",
        "result": False,
        "when.start.has_app": False,
    }
    assert kit.spans(key)[-1].attributes["saga.critical_path"] == ["email"]


def test_a_retried_step_has_two_attempt_spans(notify: Path) -> None:
    kit, key = _kit(notify, email_ms=-2000)
    kit.advance(1_000)  # the retry's backoff
    kit.run()
    assert kit.status(key) == "completed"
    first, second = _by_name(kit.spans(key))["step email"]
    assert (first.attributes["saga.attempt"], second.attributes["saga.attempt"]) == (1, 2)
    assert first.span_id != second.span_id and first.parent_id == second.parent_id
    assert first.error == "attempt 1 failed" and second.error is None
    assert [e.name for e in first.events] == ["retry scheduled"]
    assert first.events[0].attributes["saga.attempt"] == 2
    assert second.start_ms >= first.end_ms and second.end_ms - second.start_ms >= 2000
    retried = [c for c in kit.commands(key) if c.step == "email"]
    assert [c.meta["traceparent"].split("-")[2] for c in retried] == [
        first.span_id,
        second.span_id,
    ]


# -- the order saga on decide alone -------------------------------------------------------------


def _start(definition: tuple[str, SagaSpec], t0: int) -> SagaState:
    fields = {"order_id": "o-1", "customer_id": "c-1", "amount_cents": 100, "currency": "EUR"}
    fields |= {"card_token": "tok", "items": [], "shipping_address": "x", "email": "e"}
    start = Event("OrderPlaced", "e-0", fields, traceparent=f"00-{TRACE}-{START_SPAN}-01")
    state = decide(definition, None, start, t0).state
    assert state is not None
    return state


def _step(
    definition: tuple[str, SagaSpec], state: SagaState, event: Event, now: int
) -> tuple[SagaState, list[Span]]:
    decision = decide(definition, state, event, now)
    assert decision.state is not None
    return decision.state, decision_spans(definition[1], state, decision, event, now)


def test_a_declined_order_compensates_in_reverse_completion_order(
    order: tuple[str, SagaSpec],
) -> None:
    t0 = 1_000_000
    state = _start(order, t0)
    spans: list[Span] = []
    inputs = [
        Event("ShipmentCreated", "e-1", {"shipment_id": "s"}, step="shipping"),
        Event("InventoryReserved", "e-2", {"reservation_id": "r"}, step="inventory"),
        Event("PaymentFailed", "e-3", {"reason": "card declined"}, step="payment"),
        Event("InventoryReleased", "e-6", {}, step="inventory"),
        Event("ShipmentCancelled", "e-7", {}, step="shipping"),
    ]
    now = t0
    for event in inputs:
        now += 100
        state, more = _step(order, state, event, now)
        spans += more
    assert state.status == "compensated" and state.undone == ["inventory", "shipping"]
    undo = [s for s in spans if s.kind == "compensation"]
    # shipping succeeded first, inventory second: undone inventory first
    assert [s.name for s in undo] == ["compensate inventory", "compensate shipping"]
    assert undo[0].end_ms <= undo[1].start_ms
    assert all(s.error is None for s in undo)
    payments = [s for s in spans if s.name == "step payment"]
    # a declined card is the step's failure, which its policy does not retry
    assert [(s.attributes["saga.attempt"], s.attributes["saga.outcome"]) for s in payments] == [
        (1, "failed")
    ]
    saga = spans[-1]
    assert (saga.kind, saga.attributes["saga.outcome"]) == ("saga", "compensated")
    assert saga.attributes["saga.failed_step"] == "payment"
    # under the start event's span, in its trace
    assert (saga.trace_id, saga.parent_id) == (TRACE, START_SPAN)
    assert {s.parent_id for s in spans if s.kind != "saga"} == {saga.span_id}


def test_a_timed_out_attempt_says_so(order: tuple[str, SagaSpec]) -> None:
    t0 = 5_000
    state = _start(order, t0)
    due = state.timers["step_timeout|payment|1"]
    fired = {"kind": "step_timeout", "step": "payment", "attempt": 1, "due_ms": due}
    state, spans = _step(order, state, Event(TIMER_EVENT, "t-1", fired), due)
    (span,) = spans
    assert span.attributes["saga.outcome"] == "timeout"
    assert [e.name for e in span.events] == ["timeout", "retry scheduled"]
    assert (span.start_ms, span.end_ms) == (t0, due)


def test_a_decision_made_again_gives_the_same_spans(order: tuple[str, SagaSpec]) -> None:
    """An aborted transaction's input is decided again: the spans have the same ids."""
    state = _start(order, 0)
    ok = Event("PaymentCharged", "e-1", {"payment_id": "p"}, step="payment")
    assert _step(order, state, ok, 40)[1] == _step(order, state, ok, 40)[1]
    again = _step(order, state, ok, 55)[1]
    assert [s.span_id for s in again] == [s.span_id for s in _step(order, state, ok, 40)[1]]
    assert again[0].span_id == span_id(state, "attempt", "payment", 1)
    tp = command_traceparent(state, "payment", 1, undo=False)
    assert tp == f"00-{TRACE}-{again[0].span_id}-01"


def test_a_late_success_of_an_ended_attempt_ends_no_span_twice(
    order: tuple[str, SagaSpec],
) -> None:
    state = _start(order, 0)
    due = state.timers["step_timeout|payment|1"]
    fired = {"kind": "step_timeout", "step": "payment", "attempt": 1, "due_ms": due}
    state, _ = _step(order, state, Event(TIMER_EVENT, "t-1", fired), due)
    late = Event("PaymentCharged", "e-1", {"payment_id": "p"}, step="payment")
    state, spans = _step(order, state, late, due + 10)
    assert [s.kind for s in spans] == []


def test_the_step_duration_metric_observes_each_ended_attempt(
    order: tuple[str, SagaSpec],
) -> None:
    state = _start(order, 0)
    ok = Event("PaymentCharged", "e-1", {"payment_id": "p"}, step="payment")
    decision = decide(order, state, ok, 1_500)
    assert decision.state is not None
    ended = attempts_ended(state, decision.state, ok)
    metrics = Metrics.create("orchestrator")
    LifecycleMetrics(metrics).ended("order", ended)
    labels = {"saga": "order", "step": "payment", "result": "succeeded"}
    sample = metrics.registry.get_sample_value
    assert sample("sagastream_step_duration_seconds_sum", labels) == 1.5
    assert sample("sagastream_step_duration_seconds_count", labels) == 1


# -- the critical path ----------------------------------------------------------------------------


def _spec(**steps: tuple[str, ...]) -> SagaSpec:
    """A saga of steps with these dependencies."""
    return SagaSpec.model_validate(
        {
            "start_event": "Go",
            "key_field": "id",
            "steps": {
                name: {"command": f"Do{name}", "success": f"Did{name}", "depends_on": list(deps)}
                for name, deps in steps.items()
            },
        }
    )


def _timed(**times: tuple[int, int] | None) -> SagaState:
    steps = {
        name: StepState("succeeded", 1, 0, t[0], t[0], t[1]) if t else StepState("skipped")
        for name, t in times.items()
    }
    return SagaState("s", "k", None, "completed", {}, steps, 0, ended=100)


def test_the_critical_path_of_a_fan_out_is_its_longest_branch() -> None:
    spec = _spec(email=(), sms=(), push=())
    path = critical_path(spec, _timed(email=(0, 2000), sms=(0, 500), push=(0, 1000)))
    assert path.steps == ("email",)
    assert path.slack_ms == {"email": 0, "sms": 1500, "push": 1000}


def test_the_critical_path_goes_back_through_the_dependency_that_ended_last() -> None:
    # a -> (b, c) -> d: c ended later, so d waited for c; b could have ended 300 ms later
    spec = _spec(a=(), b=("a",), c=("a",), d=("b", "c"))
    times = _timed(a=(0, 100), b=(100, 200), c=(100, 500), d=(500, 900))
    path = critical_path(spec, times)
    assert path.steps == ("a", "c", "d")
    assert path.slack_ms == {"a": 0, "b": 300, "c": 0, "d": 0}


def test_a_branch_off_the_path_gets_slack_up_to_the_end() -> None:
    # a -> b (long), and c alone (short): c may end as late as b did
    spec = _spec(a=(), b=("a",), c=())
    path = critical_path(spec, _timed(a=(0, 300), b=(300, 1000), c=(0, 400)))
    assert path.steps == ("a", "b") and path.slack_ms == {"a": 0, "b": 0, "c": 600}


def test_a_skipped_dependency_is_passed_over_and_no_times_no_path() -> None:
    spec = _spec(a=(), b=("a",))
    assert critical_path(spec, _timed(a=None, b=(0, 50))).steps == ("b",)
    assert critical_path(spec, _timed(a=None, b=None)) == critical_path(spec, _timed())
    assert critical_path(spec, _timed()).steps == ()


def test_a_tie_picks_the_step_declared_first() -> None:
    spec = _spec(x=(), y=())
    assert critical_path(spec, _timed(x=(0, 100), y=(0, 100))).steps == ("x",)


def test_an_escalation_and_a_dead_letter_are_instants_under_the_saga_span() -> None:
    spec = load_topology(ROOT / "topology.yaml", ROOT / "schemas").sagas["loan"]
    loan = ("loan", spec)
    start = {"loan_id": "l-1", "customer_id": "c", "amount_cents": 1, "iban": "x", "email": "e"}
    state = decide(loan, None, Event("LoanApplied", "e-0", start), 0).state
    assert state is not None
    for n, (name, result) in enumerate(
        [("credit_check", "CreditApproved"), ("documents", "DocumentsVerified")], 1
    ):
        fields = {"credit_score": 700} if name == "credit_check" else {}
        state, _ = _step(loan, state, Event(result, f"e-{n}", fields, step=name), 10 * n)
    due = state.timers["step_timeout|review|1"]
    fired = {"kind": "step_timeout", "step": "review", "attempt": 1, "due_ms": due}
    state, spans = _step(loan, state, Event(TIMER_EVENT, "t-1", fired), due)
    (escalated,) = spans
    assert (escalated.name, escalated.kind) == ("escalate review", "instant")
    assert escalated.parent_id == span_id(state, "saga")
    assert [e.name for e in escalated.events] == ["escalation"]
    assert escalated.attributes["saga.command"] == "StepEscalated"
    # a result for a step never sent: dead-lettered, and said so in the trace
    stray = Event("LoanDisbursed", "e-9", {"transfer_id": "t"}, step="disbursement")
    decision = decide(loan, state, stray, due + 1)
    assert decision.dead_letter is not None and decision.state is None  # nothing stored
    (refused,) = decision_spans(spec, state, decision, stray, due + 1)
    assert (refused.name, refused.parent_id) == ("dead letter", span_id(state, "saga"))
    assert refused.error == decision.dead_letter
    assert refused.attributes["saga.event_type"] == "LoanDisbursed"
    assert [e.name for e in refused.events] == ["dead letter"]
    assert decision_spans(spec, None, decision, stray, due + 1) == []  # no saga: no trace
