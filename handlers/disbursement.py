"""Loan disbursement and its reversal. IBANs starting with 'XX' are rejected by the bank."""

from __future__ import annotations

import random

from sagastream.app import Context, Fail
from sagastream.examples.app import app, service
from sagastream.examples.base import short_id
from sagastream.examples.events import (
    DisburseLoan,
    DisbursementReversed,
    LoanDisbursed,
    ReverseDisbursement,
)

bank = service("disbursement")


@app.handler
async def disburse(cmd: DisburseLoan, ctx: Context) -> LoanDisbursed:
    def operation(rng: random.Random) -> LoanDisbursed:
        if cmd.iban.startswith("XX") or bank.failed_by_chance(rng):
            raise Fail("bank rejected the transfer")
        return LoanDisbursed(loan_id=cmd.loan_id, transfer_id=short_id("trf", ctx.idempotency_key))

    return await bank.once(ctx, operation)


@app.handler
async def reverse(cmd: ReverseDisbursement, ctx: Context) -> DisbursementReversed:
    return await bank.once(
        ctx, lambda rng: DisbursementReversed(loan_id=cmd.loan_id, transfer_id=cmd.transfer_id)
    )
