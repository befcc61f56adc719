"""Handler functions for the handler fault tests: a payment service written as plain functions.

A charge of an order whose id starts with "block" never returns (a hung call to a gateway); one
starting with "slow" takes two seconds; the others answer at once.
"""

from __future__ import annotations

import time

from sagastream.app import App
from sagastream.examples.events import (
    ChargePayment,
    PaymentCharged,
    PaymentRefunded,
    RefundPayment,
)

app = App()
SLOW_S = 2.0


@app.handler
def charge(cmd: ChargePayment) -> PaymentCharged:
    if cmd.order_id.startswith("block"):
        time.sleep(3600)
    if cmd.order_id.startswith("slow"):
        time.sleep(SLOW_S)
    return PaymentCharged(
        order_id=cmd.order_id, payment_id=f"pay-{cmd.order_id}", amount_cents=cmd.amount_cents
    )


@app.handler
def refund(cmd: RefundPayment) -> PaymentRefunded:
    return PaymentRefunded(order_id=cmd.order_id, payment_id=cmd.payment_id)
