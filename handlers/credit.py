"""The credit bureau: scores an applicant. Customers whose id starts with 'bad-' are rejected."""

from __future__ import annotations

import random

from sagastream.app import Context, Fail
from sagastream.examples.app import app, service
from sagastream.examples.events import CheckCredit, CreditApproved

bureau = service("credit")


@app.handler
async def check(cmd: CheckCredit, ctx: Context) -> CreditApproved:
    def operation(rng: random.Random) -> CreditApproved:
        if cmd.customer_id.startswith("bad-"):
            raise Fail("credit score too low")
        if bureau.failed_by_chance(rng):
            raise Fail("bureau unavailable")
        return CreditApproved(loan_id=cmd.loan_id, credit_score=600 + rng.randrange(250))

    return await bureau.once(ctx, operation)
