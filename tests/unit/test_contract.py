"""The handler contract (sagastream.runtime.contract): what a handler may answer, checked at
registration and at run time, and the StepAttemptFailed that reports a failed attempt."""

from pathlib import Path
from typing import Any

import pytest

from sagastream.app import App
from sagastream.core.topology import load_topology
from sagastream.events import SagaCompleted, StepSignal
from sagastream.examples.events import (
    ChargePayment,
    PaymentCharged,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
)
from sagastream.runtime.contract import (
    AttemptError,
    Contract,
    ContractError,
    allowed_results,
)

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = load_topology(ROOT / "topology.yaml", ROOT / "schemas")
CONTRACT = Contract(TOPOLOGY)

CHARGE = ChargePayment(
    idempotency_key="order:o-1:payment",
    order_id="o-1",
    customer_id="c",
    amount_cents=500,
    currency="EUR",
    card_token="tok",
)


def _record(command: Any, **meta: Any) -> dict[str, Any]:
    base = {"event_id": "e-1", "saga_key": "o-1", "correlation_id": "c-1", "attempt": 1}
    return {"meta": {**base, **meta}, **command.fields()}


def test_a_command_may_answer_the_success_and_failure_events_of_its_steps_only() -> None:
    assert allowed_results(TOPOLOGY, "ChargePayment") == {"PaymentCharged", "PaymentFailed"}
    assert allowed_results(TOPOLOGY, "RefundPayment") == {"PaymentRefunded", "CompensationFailed"}
    # a notification's replies: the non-command events its role produces
    assert allowed_results(TOPOLOGY, "SendNotification") == {
        "NotificationSent",
        "NotificationFailed",
    }


@pytest.mark.parametrize(
    ("result", "why"),
    [
        ("SagaCompleted", "an engine event"),
        ("StepSignal", "an engine event"),
        ("StepAttemptFailed", "an engine event"),
        ("RefundPayment", "a command"),
        ("PaymentRefunded", "a result of another step"),
    ],
)
def test_anything_else_is_refused_with_a_reason_that_names_what_is_allowed(
    result: str, why: str
) -> None:
    reason = CONTRACT.check_result("ChargePayment", result)
    assert reason is not None
    assert why in reason and "PaymentCharged, PaymentFailed" in reason
    assert CONTRACT.check_result("ChargePayment", "PaymentFailed") is None


def test_a_declared_return_type_that_cannot_answer_the_command_fails_at_registration() -> None:
    app = App()

    @app.handler
    def charge(cmd: ChargePayment) -> PaymentRefunded:
        raise NotImplementedError

    @app.handler
    def refund(cmd: RefundPayment) -> PaymentRefunded:
        raise NotImplementedError

    with pytest.raises(ContractError, match=r"charge declares it returns PaymentRefunded"):
        app.role_handler("payment", TOPOLOGY)


@pytest.mark.parametrize("returns", [SagaCompleted, StepSignal, PaymentCharged | None])
def test_outcomes_signals_and_none_are_refused_at_registration(returns: Any) -> None:
    app = App()

    def charge(cmd: ChargePayment) -> Any:
        raise NotImplementedError

    charge.__annotations__["return"] = returns
    app.handler(charge)
    app.handler(RefundPayment)(lambda cmd: None)
    with pytest.raises(ContractError, match="declares it returns"):
        app.role_handler("payment", TOPOLOGY)


def test_a_role_function_may_declare_the_results_of_all_its_commands() -> None:
    app = App()

    @app.handler(role="payment")
    def both(cmd: Any) -> PaymentCharged | PaymentFailed | PaymentRefunded:
        raise NotImplementedError

    assert app.role_handler("payment", TOPOLOGY).commands == {"ChargePayment", "RefundPayment"}


def test_at_run_time_a_wrong_result_raises_contract_error_even_without_an_annotation() -> None:
    app = App()

    @app.handler(ChargePayment)
    def forge(cmd):  # type: ignore[no-untyped-def]
        return SagaCompleted(saga_type="order", completed_steps=["payment"])

    @app.handler(RefundPayment)
    def refund(cmd):  # type: ignore[no-untyped-def]
        return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)

    role = app.role_handler("payment", TOPOLOGY)
    with pytest.raises(ContractError, match="answered SagaCompleted, an engine event"):
        role("ChargePayment", _record(CHARGE))


def test_a_failed_attempt_names_the_step_the_command_names_and_whether_it_is_an_undo() -> None:
    failed = CONTRACT.attempt_failed(
        "ChargePayment",
        _record(CHARGE, step="payment"),
        AttemptError.of("exception", ConnectionError("bank down")),
    )
    assert failed == (
        "StepAttemptFailed",
        {
            "saga_type": "order",
            "step": "payment",
            "kind": "exception",
            "error_type": "ConnectionError",
            "message": "bank down",
            "compensation": False,
        },
    )
    refund = RefundPayment(idempotency_key="k", order_id="o-1", payment_id="p", amount_cents=1)
    undo = CONTRACT.attempt_failed(
        "RefundPayment", _record(refund), AttemptError.of("timeout", "ran past 15.0s")
    )[1]
    assert (undo["step"], undo["compensation"], undo["kind"]) == ("payment", True, "timeout")
