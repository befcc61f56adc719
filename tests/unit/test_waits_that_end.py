"""Waits that end (issue 15, finding 2 and "What to build" 5 and 8): a saga deadline ends a saga
whatever it waits on, a human step gives up after max_wait_ms as `on_expiry` says, an escalation
is checked at load, and nothing has a deadline nobody set."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from sagastream.core.saga import (
    CANCELLED,
    COMPENSATED,
    STARTED,
    STEP_FAILED,
    SUCCEEDED,
    UNDONE,
    Event,
    Timer,
    decide,
    timer_event,
)
from sagastream.core.topology import SagaSpec, StepSpec, TopologyError, parse_topology
from tests.unit.test_human_steps import APPLIED, signal, waiting_for_review
from tests.unit.test_saga import Saga, saga, sent, step

ROOT = Path(__file__).resolve().parents[2]


def loan_data() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "topology.yaml").read_text())


def loan_with(**review: Any) -> tuple[str, SagaSpec]:
    data = loan_data()
    data["sagas"]["loan"]["steps"]["review"].update(review)
    return "loan", parse_topology(data, "topology.yaml", ROOT / "schemas").sagas["loan"]


def fire(loan: tuple[str, SagaSpec], state: dict[str, Any], key: str) -> Any:
    kind, name, attempt = key.split("|")
    due = state.timers[key]
    return decide(loan, state, timer_event(Timer(due, kind, name, int(attempt)), key), due)


def outcome(d: Any) -> tuple[str, dict[str, Any]]:
    (found,) = [(c.event_type, c.fields) for c in d.commands if c.event_type.startswith("Saga")]
    return found


def test_the_deadline_ends_a_saga_waiting_for_a_person() -> None:
    """Finding 2: the deadline fired while the review waited, every finished step was undone,
    and the saga stayed compensating forever. Now the wait is cancelled and the saga ends."""
    loan = loan_with()
    state = waiting_for_review(loan)
    d = fire(loan, state, "deadline||0")
    assert d.state is not None and d.state.status == COMPENSATED
    assert d.state.steps["review"].status == CANCELLED
    assert ("step_cancelled", "review") in d.lifecycle
    assert d.state.timers == {}
    assert outcome(d) == (
        "SagaCompensated",
        {
            "saga_type": "loan",
            "reason": "saga deadline exceeded",
            "failed_step": "",
            "compensated_steps": [],  # credit_check and documents have nothing to undo
        },
    )
    assert [c.event_type for c in d.commands] == ["SagaCompensated", "SendNotification"]
    late = decide(loan, d.state, signal(), d.state.ended + 1)
    assert late.commands == [] and ("signal_ignored", "review") in late.lifecycle


def test_a_step_failing_while_a_person_waits_ends_the_saga_too() -> None:
    s = Saga(
        saga(
            ("a", step("a")),
            ("ask", StepSpec(human=True)),
            ("b", step("b", "a")),
        )
    )
    s.start()
    s.send("aDone")
    d = s.send("bFailed")
    assert s.st("ask") == CANCELLED and sent(d) == [("Undoa", "a", 1)]
    d = s.send("aUndone")
    assert s.status == COMPENSATED and d.commands[0].fields["compensated_steps"] == ["a"]


@pytest.mark.parametrize(("on_expiry", "status"), [("rejected", COMPENSATED), ("approved", None)])
def test_a_person_who_never_decides_counts_as_on_expiry(on_expiry: str, status: str | None) -> None:
    week = 7 * 86_400_000
    loan = loan_with(max_wait_ms=week, on_expiry=on_expiry)
    state = waiting_for_review(loan)
    assert state.timers["max_wait|review|1"] == 20 + week
    assert state.timers["step_timeout|review|1"] < 20 + week  # escalated before giving up
    d = fire(loan, state, "step_timeout|review|1")
    assert [c.event_type for c in d.commands] == ["StepEscalated"]
    d = fire(loan, d.state, "max_wait|review|1")
    assert ("step_expired", "review") in d.lifecycle
    if on_expiry == "rejected":
        assert d.state.status == status and d.state.steps["review"].status == STEP_FAILED
        assert d.state.reason == f"review: no decision within {week} ms, so rejected"
    else:
        assert d.state.steps["review"].status == SUCCEEDED
        assert [c.event_type for c in d.commands] == ["DisburseLoan"]
        assert d.state.data.get("review", {}) == {}  # nothing reads the decision's note
    assert "max_wait|review|1" not in d.state.timers


def test_a_decision_before_the_maximum_wait_disarms_it() -> None:
    loan = loan_with(max_wait_ms=1_000_000)
    state = waiting_for_review(loan)
    d = decide(loan, state, signal(), 100)
    assert d.state is not None and "max_wait|review|1" not in d.state.timers


def test_max_wait_is_for_human_steps() -> None:
    with pytest.raises(ValueError, match="'max_wait_ms' is for human steps"):
        StepSpec(command="Do", success="Done", max_wait_ms=5)


def test_no_deadline_unless_set() -> None:
    """Finding 6: deadline_ms defaulted to 5 minutes, unsaid, so a human step compensated then."""
    spec = SagaSpec(
        start_event="Begin", key_field="id", steps={"ask": StepSpec(human=True, command="Ask")}
    )
    assert spec.deadline_ms is None
    d = decide(("demo", spec), None, Event("Begin", "b", {"id": "k"}), 0)
    assert d.state is not None and d.state.timers == {}  # a person's wait has no timer either
    assert d.state.steps["ask"].status == STARTED


def test_compensated_steps_lists_only_steps_undone() -> None:
    """Finding 6: a saga whose first step failed listed steps with nothing undone."""
    s = Saga(saga(("a", step("a", undo=False)), ("b", step("b", "a"))))
    s.start()
    s.send("aDone")
    d = s.send("bFailed")
    assert s.status == COMPENSATED and s.st("a") == UNDONE
    assert d.commands[0].fields["compensated_steps"] == []
    s = Saga(saga(("a", step("a"))))
    s.start()
    d = s.send("aFailed")
    assert d.commands[0].fields["compensated_steps"] == []


# -- escalations are checked at load ---------------------------------------------------------------


def _with_escalation(tmp_path: Path, escalation: str, fields: list[dict[str, Any]]) -> Any:
    """topology.yaml with the review escalating by `escalation`, a command with `fields`."""
    schemas = tmp_path / "schemas"
    shutil.copytree(ROOT / "schemas", schemas)
    record = {
        "type": "record",
        "name": escalation,
        "namespace": "sagastream",
        "doc": "Escalate a review to its team.",
        "fields": [{"name": "meta", "type": "sagastream.EventMeta", "doc": "Envelope."}, *fields],
    }
    (schemas / f"{escalation}.avsc").write_text(json.dumps(record))
    data = loan_data()
    data["events"][escalation] = {"topic": "notifications.commands"}
    data["sagas"]["loan"]["steps"]["review"]["escalation"] = escalation
    return parse_topology(data, "topology.yaml", schemas)


STRING = {"type": "string", "doc": "."}


def test_an_escalation_command_a_handler_sends_on_loads_and_carries_its_key(
    tmp_path: Path,
) -> None:
    fields = [{"name": f, **STRING} for f in ("idempotency_key", "saga_type", "step")]
    fields.append({"name": "waited_ms", "type": "long", "doc": "."})
    topology = _with_escalation(tmp_path, "EscalateReview", fields)
    loan = ("loan", topology.sagas["loan"])
    state = waiting_for_review(loan)
    d = fire(loan, state, "step_timeout|review|1")
    (escalation,) = d.commands
    assert escalation.event_type == "EscalateReview" and escalation.step is None
    assert escalation.fields["idempotency_key"] == "loan:L1:review-escalation-1"


def test_an_escalation_with_fields_nobody_fills_is_refused_at_load(tmp_path: Path) -> None:
    """Finding 6: such an escalation failed three days later, when its timer fired."""
    fields = [{"name": f, **STRING} for f in ("idempotency_key", "team", "saga_type")]
    with pytest.raises(TopologyError) as err:
        _with_escalation(tmp_path, "EscalateReview", fields)
    assert "topology.yaml: sagas.loan.steps.review.escalation: EscalateReview field(s) team " in (
        str(err.value)
    )
    data = loan_data()
    data["sagas"]["loan"]["steps"]["review"]["escalation"] = "SendNotification"
    with pytest.raises(TopologyError) as err:
        parse_topology(data, "topology.yaml", ROOT / "schemas")
    assert "SendNotification field(s) customer_id, email, channel, template, outcome" in str(
        err.value
    )


def test_the_demo_loan_saga_ends_from_its_first_event_with_no_answer() -> None:
    """Nothing answers at all: timeouts, retries and the deadline end it, once."""
    loan = loan_with()
    d = decide(loan, None, Event("LoanApplied", "e1", dict(APPLIED)), 0)
    state = copy.deepcopy(d.state)
    outcomes: list[str] = []
    while state is not None and state.timers:
        key = min(state.timers, key=lambda k: (state.timers[k], k))
        d = fire(loan, state, key)
        outcomes += [c.event_type for c in d.commands if c.event_type.startswith("Saga")]
        state = d.state or state
    assert state is not None and state.status == COMPENSATED and outcomes == ["SagaCompensated"]
