"""Loan disbursement and its reversal. IBANs starting with 'XX' are rejected by the bank."""

from __future__ import annotations

import random
from typing import Any

from sagastream.examples.base import Result, SimulatedService, short_id


class DisbursementService(SimulatedService):
    name = "disbursement"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"DisburseLoan": self.disburse, "ReverseDisbursement": self.reverse}

    def disburse(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        if cmd["iban"].startswith("XX") or self.injected_failure(rng):
            return "DisbursementFailed", {
                "loan_id": cmd["loan_id"],
                "reason": "bank rejected the transfer",
            }
        transfer = short_id("trf", cmd["idempotency_key"])
        return "LoanDisbursed", {"loan_id": cmd["loan_id"], "transfer_id": transfer}

    def reverse(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        return "DisbursementReversed", {
            "loan_id": cmd["loan_id"],
            "transfer_id": cmd.get("transfer_id"),
        }
