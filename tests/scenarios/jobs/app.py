"""The jobs project's events and handler: a job whose partner fails with an exception (not a
business failure) on its first attempt and works on the next, and an expense that waits for an
approver who never answers."""

from __future__ import annotations

import asyncio

import sagastream

app = sagastream.App()


class JobSubmitted(sagastream.Event):
    """A job to run; starts the job saga."""

    job_id: str


class RunJob(sagastream.Command):
    job_id: str


class JobDone(sagastream.Event):
    job_id: str
    attempt: int


class JobRefused(sagastream.Event):
    job_id: str
    reason: str


class ExpenseFiled(sagastream.Event):
    """An expense to approve; starts the expense saga."""

    expense_id: str
    amount_cents: int


class ApproveExpense(sagastream.Command):
    """The approvers' inbox: people answer it with a signal, no handler does."""

    expense_id: str
    amount_cents: int


class ReportRequested(sagastream.Event):
    """A report that takes longer than one run-time bound, in parts; starts the report saga."""

    report_id: str
    parts: int


class BuildReport(sagastream.Command):
    report_id: str
    parts: int


class ReportBuilt(sagastream.Event):
    report_id: str


class PartnerDown(RuntimeError):
    """The partner's outage: an exception, so a failed attempt that the step retries."""


@app.handler
def run_job(cmd: RunJob, ctx: sagastream.Context) -> JobDone:
    if ctx.attempt == 1:
        raise PartnerDown(f"partner down for {cmd.job_id}")
    return JobDone(job_id=cmd.job_id, attempt=ctx.attempt)


@app.handler
async def build_report(cmd: BuildReport, ctx: sagastream.Context) -> ReportBuilt:
    for _ in range(cmd.parts):
        await asyncio.sleep(8)  # one part: within the step's 10 s bound
        ctx.heartbeat()  # and the bound starts again
    return ReportBuilt(report_id=cmd.report_id)
