"""The payment service: charges and refunds. Card token tok_decline is always declined."""

from __future__ import annotations

import random

from sagastream.app import Context, Fail
from sagastream.examples.app import app, service
from sagastream.examples.base import short_id
from sagastream.examples.events import (
    ChargePayment,
    PaymentCharged,
    PaymentRefunded,
    RefundPayment,
)

payments = service("payment")


@app.handler
async def charge(cmd: ChargePayment, ctx: Context) -> PaymentCharged:
    def operation(rng: random.Random) -> PaymentCharged:
        if cmd.card_token == "tok_decline":
            raise Fail("card declined")  # answered with the step's failure, PaymentFailed
        if cmd.amount_cents <= 0:
            raise Fail("amount must be positive")
        if payments.failed_by_chance(rng):
            raise Fail("payment gateway error")
        payment_id = short_id("pay", ctx.idempotency_key)
        return PaymentCharged(
            order_id=cmd.order_id, payment_id=payment_id, amount_cents=cmd.amount_cents
        )

    return await payments.once(ctx, operation)


@app.handler
async def refund(cmd: RefundPayment, ctx: Context) -> PaymentRefunded:
    return await payments.once(
        ctx, lambda rng: PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)
    )
