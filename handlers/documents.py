"""Document verification. Customers whose id starts with 'forged-' have documents rejected."""

from __future__ import annotations

import random

from sagastream.app import Context, Fail
from sagastream.examples.app import app, service
from sagastream.examples.events import DocumentsVerified, VerifyDocuments

verifier = service("documents")


@app.handler
async def verify(cmd: VerifyDocuments, ctx: Context) -> DocumentsVerified:
    def operation(rng: random.Random) -> DocumentsVerified:
        if cmd.customer_id.startswith("forged-"):
            raise Fail("documents not genuine")
        if verifier.failed_by_chance(rng):
            raise Fail("verifier unavailable")
        return DocumentsVerified(loan_id=cmd.loan_id)

    return await verifier.once(ctx, operation)
