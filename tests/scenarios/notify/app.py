"""The notification fan-out of the seeds, for the span tests: email takes 2 s, SMS 0.5 s and push
1 s, in parallel, so the saga takes about 2 s, not 3.5. An email whose `email_ms` is negative
fails its first attempt (a retried step). `write_project` lays it out (topology, schemas)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import sagastream
from sagastream.events import records_of, write_schemas

APP = "tests.scenarios.notify.app"
app = sagastream.App()


def write_project(directory: Path) -> Path:
    """The notify project in `directory`: its topology.yaml and the schemas its models derive;
    returns the topology file."""
    directory.mkdir(parents=True, exist_ok=True)
    topology = directory / "topology.yaml"
    shutil.copy(Path(__file__).with_name("topology.yaml"), topology)
    write_schemas(records_of(APP), directory / "schemas")
    return topology


class NoticeRequested(sagastream.Event):
    """A notice to send on every channel the customer has; starts the notice saga."""

    notice_id: str
    has_app: bool = True
    email_ms: int = 2000  # how long the email provider takes; negative: fails once, then that


class SendEmail(sagastream.Command):
    notice_id: str
    email_ms: int = 2000


class EmailSent(sagastream.Event):
    notice_id: str


class SendSms(sagastream.Command):
    notice_id: str


class SmsSent(sagastream.Event):
    notice_id: str


class SendPush(sagastream.Command):
    notice_id: str


class PushSent(sagastream.Event):
    notice_id: str


class ProviderDown(RuntimeError):
    """The email provider's outage: a failed attempt, retried by the step."""


@app.handler
async def send_email(cmd: SendEmail, ctx: sagastream.Context) -> EmailSent:
    if cmd.email_ms < 0 and ctx.attempt == 1:
        raise ProviderDown(f"email provider down for {cmd.notice_id}")
    await asyncio.sleep(abs(cmd.email_ms) / 1000)
    return EmailSent(notice_id=cmd.notice_id)


@app.handler
async def send_sms(cmd: SendSms, ctx: sagastream.Context) -> SmsSent:
    await asyncio.sleep(0.5)
    return SmsSent(notice_id=cmd.notice_id)


@app.handler
async def send_push(cmd: SendPush, ctx: sagastream.Context) -> PushSent:
    await asyncio.sleep(1.0)
    return PushSent(notice_id=cmd.notice_id)
