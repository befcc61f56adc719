"""A payment service whose answer to orders named `huge-*` is a result of about 1.1 MB."""

from __future__ import annotations

from sagastream.app import App, Context
from sagastream.examples.events import (
    ChargePayment,
    PaymentCharged,
    PaymentRefunded,
    RefundPayment,
)

HUGE_RESULT = 1_100_000
app = App()


@app.handler
async def charge(cmd: ChargePayment, ctx: Context) -> PaymentCharged:
    huge = cmd.order_id.startswith("huge-")
    payment_id = "p" * HUGE_RESULT if huge else f"pay-{cmd.order_id}"
    return PaymentCharged(
        order_id=cmd.order_id, payment_id=payment_id, amount_cents=cmd.amount_cents
    )


@app.handler
async def refund(cmd: RefundPayment, ctx: Context) -> PaymentRefunded:
    return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)
