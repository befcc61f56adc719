"""The credit bureau: scores an applicant. Customers whose id starts with 'bad-' are rejected."""

from __future__ import annotations

import random
from typing import Any

from sagastream.examples.base import Result, SimulatedService


class CreditService(SimulatedService):
    name = "credit"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"CheckCredit": self.check}

    def check(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        if cmd["customer_id"].startswith("bad-"):
            return "CreditRejected", {"loan_id": cmd["loan_id"], "reason": "credit score too low"}
        if self.injected_failure(rng):
            return "CreditRejected", {"loan_id": cmd["loan_id"], "reason": "bureau unavailable"}
        return "CreditApproved", {
            "loan_id": cmd["loan_id"],
            "credit_score": 600 + rng.randrange(250),
        }
