"""Registering handler functions, binding them to a role, and what they answer."""

import asyncio
from pathlib import Path
from typing import Any

import pytest

from sagastream.app import App, AppError, Context, Fail, load_app
from sagastream.core.topology import load_topology
from sagastream.examples.events import (
    ChargePayment,
    PaymentCharged,
    PaymentRefunded,
    RefundPayment,
)

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = load_topology(ROOT / "topology.yaml", ROOT / "schemas")


def _record(command: Any, attempt: int = 1) -> dict[str, Any]:
    meta = {
        "event_id": "e-1",
        "saga_key": "o-1",
        "correlation_id": "c-1",
        "attempt": attempt,
    }
    return {"meta": meta, **command.fields()}


CHARGE = ChargePayment(
    idempotency_key="order:o-1:payment",
    order_id="o-1",
    customer_id="c",
    amount_cents=500,
    currency="EUR",
    card_token="tok",
)
REFUND = RefundPayment(
    idempotency_key="order:o-1:payment:undo", order_id="o-1", payment_id="p", amount_cents=500
)


def _payments(app: App) -> Any:
    return app.role_handler("payment", TOPOLOGY)


def test_a_function_is_registered_by_its_annotation_and_gets_the_typed_command() -> None:
    app = App()
    seen: list[tuple[ChargePayment, Context]] = []

    @app.handler
    async def charge(cmd: ChargePayment, ctx: Context) -> PaymentCharged:
        seen.append((cmd, ctx))
        return PaymentCharged(order_id=cmd.order_id, payment_id="p-1", amount_cents=1)

    @app.handler(RefundPayment)
    def refund(cmd):  # type: ignore[no-untyped-def]
        return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)

    role = _payments(app)
    assert role.is_async("ChargePayment") and not role.is_async("RefundPayment")
    result = asyncio.run(role("ChargePayment", _record(CHARGE, attempt=2)))
    assert result == ("PaymentCharged", {"order_id": "o-1", "payment_id": "p-1", "amount_cents": 1})
    cmd, ctx = seen[0]
    assert cmd == CHARGE
    assert (ctx.idempotency_key, ctx.attempt, ctx.saga_key, ctx.role) == (
        "order:o-1:payment",
        2,
        "o-1",
        "payment",
    )
    assert role("RefundPayment", _record(REFUND)) == (
        "PaymentRefunded",
        {"order_id": "o-1", "payment_id": "p"},
    )


def test_a_role_function_takes_what_has_no_function_of_its_own() -> None:
    app = App()

    @app.handler(role="payment")
    def anything(cmd):  # type: ignore[no-untyped-def]
        if isinstance(cmd, RefundPayment):
            return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)
        return PaymentCharged(order_id=cmd.order_id, payment_id=type(cmd).__name__, amount_cents=1)

    role = _payments(app)
    assert role("ChargePayment", _record(CHARGE))[1]["payment_id"] == "ChargePayment"
    assert role("RefundPayment", _record(REFUND))[0] == "PaymentRefunded"


def test_a_missing_function_is_an_error_at_start_that_lists_what_exists() -> None:
    app = App()

    @app.handler
    def charge(cmd: ChargePayment) -> PaymentCharged:
        raise NotImplementedError

    with pytest.raises(
        AppError, match=r"no function for RefundPayment; registered: command Charge"
    ):
        _payments(app)
    with pytest.raises(AppError, match=r"no handler role 'flight'.*roles: payment, inventory"):
        app.role_handler("flight", TOPOLOGY)


def test_fail_answers_with_the_steps_failure_event_and_the_shared_fields() -> None:
    app = App()

    @app.handler
    async def charge(cmd: ChargePayment) -> PaymentCharged:
        raise Fail("card declined")

    @app.handler
    def refund(cmd: RefundPayment) -> PaymentRefunded:
        raise Fail("provider down")

    role = _payments(app)
    assert asyncio.run(role("ChargePayment", _record(CHARGE))) == (
        "PaymentFailed",
        {"order_id": "o-1", "reason": "card declined"},
    )
    # an undo's failure event is the generic CompensationFailed, which names the step
    assert role("RefundPayment", _record(REFUND)) == (
        "CompensationFailed",
        {"step": "RefundPayment", "reason": "provider down"},
    )


def test_a_failure_event_the_step_does_not_declare_is_refused() -> None:
    app = App()

    @app.handler(role="payment")
    def refuse(cmd):  # type: ignore[no-untyped-def]
        raise Fail("no", event="ShipmentFailed")

    with pytest.raises(AppError, match="failure events are PaymentFailed"):
        _payments(app)("ChargePayment", _record(CHARGE))


def test_returning_something_else_than_an_event_says_what_to_do() -> None:
    app = App()

    @app.handler(role="payment")
    def wrong(cmd):  # type: ignore[no-untyped-def]
        return {"order_id": "o-1"}

    with pytest.raises(TypeError, match="not an event; return the step's result event"):
        _payments(app)("ChargePayment", _record(CHARGE))


def test_registrations_that_cannot_work_are_refused() -> None:
    app = App()
    with pytest.raises(AppError, match="annotate its first parameter"):

        @app.handler
        def untyped(cmd):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    @app.handler(ChargePayment)
    def first(cmd: ChargePayment) -> None:
        raise NotImplementedError

    with pytest.raises(AppError, match="already has"):
        app.handler(ChargePayment)(first)

    @app.handler(role="payment")
    def too_many(cmd, ctx, extra):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    with pytest.raises(AppError, match=r"must take \(command\) or \(command, ctx\)"):
        _payments(app)


def test_load_app_finds_the_app_or_says_how_to_name_it() -> None:
    from sagastream import examples

    assert load_app("sagastream.examples") is examples.app
    assert load_app("sagastream.examples:app") is examples.app
    with pytest.raises(AppError, match="cannot import the app module 'nowhere_at_all'"):
        load_app("nowhere_at_all")
    with pytest.raises(AppError, match="has no sagastream.App"):
        load_app("sagastream.events")


def test_startup_hooks_get_the_settings() -> None:
    app = App()
    got: list[object] = []
    app.on_startup(got.append)
    app.start("settings")
    assert got == ["settings"]
