"""The payment service: charges and refunds. Card token tok_decline is always declined."""

from __future__ import annotations

import random
from typing import Any

from sagastream.examples.base import Result, SimulatedService, short_id


class PaymentService(SimulatedService):
    name = "payment"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"ChargePayment": self.charge, "RefundPayment": self.refund}

    def charge(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        if cmd["card_token"] == "tok_decline":
            return "PaymentFailed", {"order_id": cmd["order_id"], "reason": "card declined"}
        if cmd["amount_cents"] <= 0:
            return "PaymentFailed", {
                "order_id": cmd["order_id"],
                "reason": "amount must be positive",
            }
        if self.injected_failure(rng):
            return "PaymentFailed", {"order_id": cmd["order_id"], "reason": "payment gateway error"}
        payment_id = short_id("pay", cmd["idempotency_key"])
        return "PaymentCharged", {
            "order_id": cmd["order_id"],
            "payment_id": payment_id,
            "amount_cents": cmd["amount_cents"],
        }

    def refund(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        return "PaymentRefunded", {"order_id": cmd["order_id"], "payment_id": cmd.get("payment_id")}
