"""Document verification. Customers whose id starts with 'forged-' have documents rejected."""

from __future__ import annotations

import random
from typing import Any

from sagastream.examples.base import Result, SimulatedService


class DocumentService(SimulatedService):
    name = "documents"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.operations = {"VerifyDocuments": self.verify}

    def verify(self, cmd: dict[str, Any], rng: random.Random) -> Result:
        if cmd["customer_id"].startswith("forged-"):
            return "DocumentsRejected", {
                "loan_id": cmd["loan_id"],
                "reason": "documents not genuine",
            }
        if self.injected_failure(rng):
            return "DocumentsRejected", {
                "loan_id": cmd["loan_id"],
                "reason": "verifier unavailable",
            }
        return "DocumentsVerified", {"loan_id": cmd["loan_id"]}
