"""Human steps (signals, escalation) and the input checks in front of decide, on the loan saga."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagastream.core.saga import Event, Timer, decide, timer_event
from sagastream.core.topology import Topology, load_topology
from sagastream.ops.signals import SignalError, check_signal

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology(ROOT / "topology.yaml", ROOT / "schemas")


@pytest.fixture
def loan(topology: Topology):
    return ("loan", topology.sagas["loan"])


APPLIED = {
    "loan_id": "L1",
    "customer_id": "c",
    "email": "e",
    "amount_cents": 5,
    "term_months": 12,
    "iban": "X",
}


def waiting_for_review(loan):
    d = decide(loan, None, Event("LoanApplied", "e1", APPLIED), 0)
    assert [c.event_type for c in d.commands] == ["CheckCredit", "VerifyDocuments"]
    d = decide(
        loan, d.state, Event("CreditApproved", "e2", {"loan_id": "L1", "credit_score": 700}), 10
    )
    assert d.commands == []  # fan-in: the review waits for both checks
    d = decide(loan, d.state, Event("DocumentsVerified", "e3", {"loan_id": "L1"}), 20)
    assert [c.event_type for c in d.commands] == ["RequestReview"]
    # the reviewer sees the application and the credit check's score
    assert d.commands[0].fields == {
        "loan_id": "L1",
        "customer_id": "c",
        "amount_cents": 5,
        "credit_score": 700,
        "idempotency_key": "loan:L1:review",
    }
    return d.state


def signal(outcome="approved", step="review", saga="loan", event_id="s1", **extra):
    fields = {
        "saga_type": saga,
        "step": step,
        "outcome": outcome,
        "note": "n",
        "decided_by": "ann",
        **extra,
    }
    return Event("StepSignal", event_id, fields)


def test_review_timeout_escalates_and_keeps_waiting(loan):
    state = waiting_for_review(loan)
    due = state.timers["step_timeout|review|1"]
    d = decide(loan, state, timer_event(Timer(due, "step_timeout", "review", 1), "t1"), due)
    assert [(c.event_type, c.fields) for c in d.commands] == [
        (
            "StepEscalated",
            {
                "saga_type": "loan",
                "step": "review",
                "waited_ms": 172_800_000,
                # dropped by the encoder for StepEscalated; a command escalation carries it
                "idempotency_key": "loan:L1:review-escalation-1",
            },
        )
    ]
    assert d.state.status == "running" and d.state.steps["review"].status == "running"
    assert ("step_escalated", "review") in d.lifecycle
    d = decide(loan, d.state, signal("approved"), due + 5)
    assert [c.event_type for c in d.commands] == ["DisburseLoan"]
    assert d.commands[0].fields == {
        "loan_id": "L1",
        "amount_cents": 5,
        "iban": "X",
        "idempotency_key": "loan:L1:disbursement",
    }
    # no step of the loan saga reads the review's note or decider, so the state keeps neither
    assert "review" not in d.state.data


def test_rejection_fails_the_step_and_compensates(loan):
    d = decide(loan, waiting_for_review(loan), signal("rejected"), 30)
    assert d.state.status == "compensated"
    assert d.state.failed_step == "review"
    assert d.state.reason == "review: rejected by ann: n"
    assert [c.event_type for c in d.commands] == ["SagaCompensated", "SendNotification"]


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (signal(step="disbursement"), "no human step of that name"),
        (signal(saga="order"), "no human step of that name"),
        (signal(outcome="maybe"), "must be approved or rejected"),
    ],
)
def test_signals_that_do_not_fit_are_dead_lettered(loan, event, why):
    d = decide(loan, waiting_for_review(loan), event, 30)
    assert why in d.dead_letter
    assert d.commands == []


def test_signal_before_the_step_waits_is_ignored(loan):
    d = decide(loan, None, Event("LoanApplied", "e1", APPLIED), 0)
    d = decide(loan, d.state, signal("approved"), 5)
    assert d.commands == [] and d.dead_letter is None
    assert d.lifecycle == [("signal_ignored", "review")]


def test_a_repeated_signal_is_a_duplicate(loan):
    d = decide(loan, waiting_for_review(loan), signal("approved"), 30)
    again = decide(loan, d.state, signal("approved"), 31)
    assert again.duplicate and again.commands == []


def test_a_duplicate_past_the_hop_limit_is_still_just_a_duplicate(loan):
    state = waiting_for_review(loan)
    again = decide(loan, state, Event("DocumentsVerified", "e3", {"loan_id": "L1"}, hop=999), 30)
    assert again.duplicate and again.dead_letter is None


def test_start_event_without_its_key_is_dead_lettered(loan):
    d = decide(loan, None, Event("LoanApplied", "e1", {**APPLIED, "loan_id": ""}), 0)
    assert d.state is None and "has no loan_id" in d.dead_letter


def test_check_signal_names_what_is_wrong(topology):
    check_signal(topology, "loan", "review", "approved")
    with pytest.raises(SignalError, match="unknown saga 'lease'"):
        check_signal(topology, "lease", "review", "approved")
    with pytest.raises(SignalError, match="steps taking signals: review"):
        check_signal(topology, "loan", "credit_check", "approved")
    with pytest.raises(SignalError, match="outcome must be one of"):
        check_signal(topology, "loan", "review", "yes")
