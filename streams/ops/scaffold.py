"""`sagastream init DIR`: a small working project to start from.

One saga (a subscription: open an account, then charge the first month; a declined card closes
the account again), its events as pydantic models and their derived schemas, a handler module,
unit tests on sagastream.testing, a script that runs it on a local broker, and a README.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from sagastream.errors import UsageError
from sagastream.events import records_of, write_schemas

TOPOLOGY = """\
# {package}: sagas, their events and the handler roles that answer their commands.
# Every topic of one saga has the same partition count and is keyed by the saga key.
app: {package}.handlers               # the module that registers the handler functions

defaults:
  partitions: 4

topics:
  - {{name: subscriptions.events}}
  - {{name: accounts.commands}}
  - {{name: accounts.events}}
  - {{name: billing.commands}}
  - {{name: billing.events}}

# event type -> topic; each event's model is in {package}/events.py, its schema in schemas/
events:
  SubscriptionRequested: {{topic: subscriptions.events}}
  OpenAccount: {{topic: accounts.commands}}
  CloseAccount: {{topic: accounts.commands}}
  AccountOpened: {{topic: accounts.events}}
  AccountRefused: {{topic: accounts.events}}
  AccountClosed: {{topic: accounts.events}}
  CompensationFailed: {{topics: [accounts.events]}}
  ChargeFirstMonth: {{topic: billing.commands}}
  MonthCharged: {{topic: billing.events}}
  CardDeclined: {{topic: billing.events}}

handlers:
  accounts: {{consumes: accounts.commands, produces: accounts.events}}
  billing: {{consumes: billing.commands, produces: billing.events, concurrency: 16}}

sagas:
  subscription:
    start_event: SubscriptionRequested
    key_field: subscription_id
    deadline_ms: 60000
    steps:
      account:
        command: OpenAccount
        inputs: {{start: [subscription_id, email]}}
        success: AccountOpened
        failure: [AccountRefused]
        timeout_ms: 5000              # one attempt's run
        schedule_to_close_ms: 10000   # no answer 10 s after sending (a lost reply): retried
        retry: {{max_attempts: 3, initial_backoff_ms: 200}}
        compensation:
          command: CloseAccount
          inputs: {{account: [account_id]}}
          success: AccountClosed
          failure: [CompensationFailed]
      billing:
        command: ChargeFirstMonth
        depends_on: [account]
        inputs:
          start: [subscription_id, plan, card_token]
          account: [account_id]
        success: MonthCharged
        failure: [CardDeclined]
        timeout_ms: 5000
"""

EVENTS = '''\
"""The events of {package}: written once, here. schemas/*.avsc is derived from them:
run `sagastream schemas generate` after a change (`sagastream schemas check` fails until then)."""

from pydantic import Field

from sagastream import Command, Event


class SubscriptionRequested(Event):
    """Someone subscribed; starts a subscription saga."""

    subscription_id: str = Field(description="The saga key.")
    email: str
    plan: str = Field(description="basic or pro.")
    card_token: str


class OpenAccount(Command):
    """Open an account for a new subscriber."""

    subscription_id: str
    email: str


class AccountOpened(Event):
    account_id: str


class AccountRefused(Event):
    reason: str


class CloseAccount(Command):
    """Undo OpenAccount."""

    account_id: str


class AccountClosed(Event):
    account_id: str


class ChargeFirstMonth(Command):
    subscription_id: str
    account_id: str
    plan: str
    card_token: str


class MonthCharged(Event):
    amount_cents: int


class CardDeclined(Event):
    reason: str
'''

HANDLERS = '''\
"""The handler functions of {package}: one per command type, async or plain.

Each gets the typed command and a context with its idempotency key and attempt. It returns the
step's result event, or raises sagastream.Fail(reason) for the step's failure event. A command
can arrive more than once (retries, restarts): use ctx.idempotency_key to do its effect once.
"""

import asyncio

import sagastream

from {package}.events import (
    AccountClosed,
    AccountOpened,
    ChargeFirstMonth,
    CloseAccount,
    MonthCharged,
    OpenAccount,
)

app = sagastream.App()

PRICES = {{"basic": 500, "pro": 1500}}


@app.handler
async def open_account(cmd: OpenAccount, ctx: sagastream.Context) -> AccountOpened:
    await asyncio.sleep(0.01)  # your service call here
    if not cmd.email or "@" not in cmd.email:
        raise sagastream.Fail(f"not an e-mail address: {{cmd.email!r}}")
    return AccountOpened(account_id=f"acct-{{ctx.idempotency_key}}")


@app.handler
async def close_account(cmd: CloseAccount) -> AccountClosed:
    return AccountClosed(account_id=cmd.account_id)


@app.handler
def charge_first_month(cmd: ChargeFirstMonth, ctx: sagastream.Context) -> MonthCharged:
    """A plain function: it runs in the worker's thread pool."""
    if cmd.card_token == "tok_decline":
        raise sagastream.Fail("card declined")
    return MonthCharged(amount_cents=PRICES.get(cmd.plan, 500))
'''

TESTS = '''\
"""The subscription saga with its real handler functions, no broker, on a virtual clock."""

from pathlib import Path

from sagastream.testing import SagaTest

from {package}.events import SubscriptionRequested

TOPOLOGY = Path(__file__).resolve().parents[1] / "topology.yaml"


def _request(card_token: str = "tok_visa") -> SubscriptionRequested:
    return SubscriptionRequested(
        subscription_id="s-1", email="ada@example.com", plan="pro", card_token=card_token
    )


def test_a_subscription_opens_an_account_then_charges_it() -> None:
    saga = SagaTest.load(TOPOLOGY)
    key = saga.start(_request())
    saga.run()
    assert saga.status(key) == "completed"
    assert saga.sent(key) == ["OpenAccount", "ChargeFirstMonth"]
    charge = saga.commands(key)[1]
    assert charge.fields["account_id"] == "acct-subscription:s-1:account"


def test_a_declined_card_closes_the_account_again() -> None:
    saga = SagaTest.load(TOPOLOGY)
    key = saga.start(_request(card_token="tok_decline"))
    saga.run()
    assert saga.status(key) == "compensated"
    assert saga.sent(key)[-1] == "CloseAccount"


def test_a_lost_reply_is_retried_after_the_timeout() -> None:
    saga = SagaTest.load(TOPOLOGY)
    key = saga.start(_request())
    saga.drop(saga.pending(key)[0])
    saga.advance(10_000)  # schedule_to_close_ms: no answer, so the retry follows a backoff
    saga.advance(1_000)
    saga.run()
    assert [c.attempt for c in saga.commands(key) if c.event_type == "OpenAccount"] == [1, 2]
    assert saga.status(key) == "completed"
'''

RUN = '''\
"""Run {package} for real: Kafka (a local one unless SAGASTREAM_BOOTSTRAP_SERVERS names yours),
its topics, one worker process with every role, and a few subscriptions, printing how each
ended. `python run.py [N]`"""

import os
import subprocess
import sys
import time

import sagastream
from sagastream.local import kafka

from {package}.events import SubscriptionRequested


def main(count: int) -> int:
    if "SAGASTREAM_BOOTSTRAP_SERVERS" not in os.environ:
        kafka.start()  # a local broker on 127.0.0.1:9092, downloaded from Maven Central once
    subprocess.run(["sagastream", "topics", "create"], check=True)
    worker = subprocess.Popen(["sagastream", "worker", "--role", "all", "--loglevel", "info"])
    try:
        with sagastream.Client() as client:
            keys = [
                client.start(
                    SubscriptionRequested(
                        subscription_id=f"s-{{time.time_ns()}}-{{i}}",
                        email=f"user{{i}}@example.com",
                        plan="pro" if i % 2 else "basic",
                        card_token="tok_decline" if i % 3 == 2 else "tok_visa",
                    )
                )
                for i in range(count)
            ]
            ended = {{}}
            deadline = time.monotonic() + 60
            while len(ended) < len(keys) and time.monotonic() < deadline:
                for key in keys:
                    view = None if key in ended else client.describe("subscription", key)
                    if view is not None and view.status in ("completed", "compensated", "failed"):
                        ended[key] = view.status
                time.sleep(0.5)
        for key in keys:
            print(f"{{key}}: {{ended.get(key, 'still running')}}")
        return 0 if len(ended) == len(keys) else 1
    finally:
        worker.terminate()
        worker.wait(30)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 6))
'''

README = """\
# {package}

A sagastream project: one saga (`subscription`: open an account, then charge the first month;
a declined card closes the account again). `topology.yaml` declares it, `{package}/events.py`
holds its events (the Avro schemas in `schemas/` are derived from them), `{package}/handlers.py`
the functions that answer its commands.

Run its tests (no broker needed), then run it on a local Kafka (Java 17 and Maven needed):

```sh
python -m pytest tests
python run.py
```

After changing an event, run `sagastream schemas generate`; `sagastream schemas check` fails
(in CI, say) while a schema is stale. Workers in production: `sagastream worker --role
orchestrator` and `sagastream worker --role accounts,billing`, any number of each, with
`SAGASTREAM_BOOTSTRAP_SERVERS` pointing at your cluster.
"""


def package_name(directory: Path) -> str:
    """A Python package name from the project folder's name."""
    name = re.sub(r"\W", "_", directory.resolve().name.lower()).strip("_") or "project"
    if name[0].isdigit() or keyword.iskeyword(name) or name == "sagastream":
        name = f"{name}_app"
    return name


def init(directory: Path) -> list[Path]:
    """Write the project into `directory` (new, or empty); returns the files written."""
    if directory.exists() and any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty; sagastream init writes a new project")
    package = package_name(directory)
    files = {
        "topology.yaml": TOPOLOGY,
        "README.md": README,
        "run.py": RUN,
        f"{package}/__init__.py": '"""The {package} sagastream project."""\n',
        f"{package}/events.py": EVENTS,
        f"{package}/handlers.py": HANDLERS,
        "tests/__init__.py": "",
        "tests/test_subscription.py": TESTS,
    }
    written = []
    for relative, template in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(package=package), encoding="utf-8")
        written.append(path)
    written += _derive_schemas(directory, package)
    return written


def _derive_schemas(directory: Path, package: str) -> list[Path]:
    import importlib
    import sys

    sys.path.insert(0, str(directory.resolve()))
    try:
        importlib.invalidate_caches()
        return write_schemas(records_of(f"{package}.events"), directory / "schemas")
    finally:
        sys.path.remove(str(directory.resolve()))
