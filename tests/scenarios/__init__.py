"""One scenario suite for two backends: the test kit (sagastream.testing) and real workers on a
broker. Each scenario drives a `Backend` and asserts what a user would; the kit's variant runs in
tests/unit, the workers' in tests/integration. Both must pass the same assertions: that is how the
kit is shown to behave like the runtime (FastStream's model: one contract suite, a fake and a
real broker)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sagastream.events import Event, SagaCompensated, SagaCompleted
from sagastream.examples.events import LoanApplied, OrderItem, OrderPlaced
from sagastream.ops.inspect import SagaView
from tests.scenarios.jobs import write_project
from tests.scenarios.jobs.app import ExpenseFiled, JobSubmitted

ROOT = Path(__file__).resolve().parents[2]


class Backend(Protocol):
    """What a scenario may do: start a saga, wait for a human step, signal it, get the outcome."""

    def start(self, event: Event) -> str: ...

    def waiting(self, saga: str, key: str, step: str) -> None:
        """Return once the human `step` of the saga waits for a decision."""

    def signal(self, saga: str, key: str, step: str, outcome: str, by: str) -> None: ...

    def result(self, saga: str, key: str) -> Event:
        """The saga's outcome, once it has ended (time passes as needed)."""

    def describe(self, saga: str, key: str) -> SagaView:
        """What `sagastream saga show` says of the saga: its steps, attempts and status."""


@dataclass(frozen=True)
class Project:
    """A topology with its app, and the handler roles a worker runs for it."""

    name: str
    roles: str
    write: Callable[[Path], Path] | None = None  # lays the project out in a directory

    def topology(self, directory: Path) -> Path:
        return ROOT / "topology.yaml" if self.write is None else self.write(directory)


DEMO = Project("demo", "payment,inventory,shipping,notification,credit,documents,disbursement")
JOBS = Project("jobs", "jobs", write_project)


def order(order_id: str, **changes: object) -> OrderPlaced:
    """An order of the demo's order saga, built to complete unless changed."""
    fields = {
        "order_id": order_id,
        "customer_id": "c-1",
        "email": "buyer@example.com",
        "amount_cents": 1200,
        "currency": "EUR",
        "card_token": "tok_visa",
        "items": [OrderItem(sku="SKU-1", quantity=2)],
        "shipping_address": "1 Main Street",
        "priority": "normal",
        "has_app": False,
    }
    return OrderPlaced.model_validate({**fields, **changes})


def loan(loan_id: str) -> LoanApplied:
    """A loan application that passes credit and documents, then waits for its review."""
    return LoanApplied(
        loan_id=loan_id,
        customer_id="c-1",
        email="applicant@example.com",
        amount_cents=100_000,
        term_months=12,
        iban="DE89370400440532013000",
    )


def the_order_saga_completes(backend: Backend) -> None:
    key = backend.start(order("order-completes"))
    outcome = backend.result("order", key)
    assert isinstance(outcome, SagaCompleted), outcome
    assert sorted(outcome.completed_steps) == ["inventory", "payment", "shipping"]


def a_declined_payment_compensates(backend: Backend) -> None:
    key = backend.start(order("order-declined", card_token="tok_decline"))
    outcome = backend.result("order", key)
    assert isinstance(outcome, SagaCompensated), outcome
    assert outcome.failed_step == "payment" and "card declined" in outcome.reason
    assert "payment" not in outcome.compensated_steps  # the charge never happened


def a_loan_waiting_for_review_is_approved_by_a_signal(backend: Backend) -> None:
    key = backend.start(loan("loan-approved"))
    backend.waiting("loan", key, "review")
    backend.signal("loan", key, "review", "approved", by="ana")
    outcome = backend.result("loan", key)
    assert isinstance(outcome, SagaCompleted), outcome
    assert outcome.completed_steps[-2:] == ["review", "disbursement"]


def a_handler_that_raises_is_retried_and_succeeds(backend: Backend) -> None:
    key = backend.start(JobSubmitted(job_id="job-flaky"))
    outcome = backend.result("job", key)
    assert isinstance(outcome, SagaCompleted), outcome
    (run,) = backend.describe("job", key).steps
    assert (run.name, run.state, run.attempts) == ("run", "succeeded", 2)


def a_human_step_gives_up_after_its_max_wait(backend: Backend) -> None:
    key = backend.start(ExpenseFiled(expense_id="expense-unanswered", amount_cents=9_900))
    backend.waiting("expense", key, "approval")
    outcome = backend.result("expense", key)  # nobody answers: max_wait_ms passes
    assert isinstance(outcome, SagaCompensated), outcome
    assert outcome.failed_step == "approval"
    (approval,) = backend.describe("expense", key).steps
    assert (approval.name, approval.state) == ("approval", "failed")


@dataclass(frozen=True)
class Scenario:
    """A scenario and the project it runs on."""

    run: Callable[[Backend], None]
    project: Project

    @property
    def name(self) -> str:
        return self.run.__name__


SCENARIOS = [
    Scenario(the_order_saga_completes, DEMO),
    Scenario(a_declined_payment_compensates, DEMO),
    Scenario(a_loan_waiting_for_review_is_approved_by_a_signal, DEMO),
    Scenario(a_handler_that_raises_is_retried_and_succeeds, JOBS),
    Scenario(a_human_step_gives_up_after_its_max_wait, JOBS),
]
