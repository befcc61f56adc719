"""`saga list` and `Client.list_sagas` against real workers: by status, type, age and limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from sagastream.examples.events import OrderPlaced
from sagastream.ops.client import Client
from sagastream.ops.demo import settings_env
from tests.integration.conftest import HANDLERS
from tests.integration.helpers import good_order, loan_applied, wait_outcomes

pytestmark = pytest.mark.integration

LOAN_HANDLERS = "credit,documents,disbursement"
# the orders start this long after the loan, so an age between theirs and the loan's exists
GAP_S = 6.0


def saga_list(ns: Any, *args: str) -> list[list[str]]:
    """`sagastream saga list ARGS`: its rows, split into cells (started is three cells)."""
    done = subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", "saga", "list", *args],
        env={**os.environ, **settings_env(ns.settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "changelog records)" in lines[-1], done.stdout
    return [line.split() for line in lines[1:-1]]


def keys(rows: list[list[str]]) -> list[str]:
    return [row[1] for row in rows]


def test_saga_list_by_status_type_age_and_limit(ns: Any, start_workers: Any) -> None:
    start_workers("orchestrator")
    start_workers(f"{HANDLERS},{LOAN_HANDLERS}")
    completed = [f"list-ok-{i}" for i in range(3)]
    compensated = [f"list-declined-{i}" for i in range(2)]
    loan = loan_applied("list-loan")
    with Client(ns.settings) as client:
        client.start(loan)
        # the loan waits for its human review from here on
        deadline = time.monotonic() + 40
        while (view := client.describe("loan", "list-loan")) is None or not any(
            s.name == "review" and s.state == "running" for s in view.steps
        ):
            assert time.monotonic() < deadline, f"the loan never waited for its review: {view}"
            time.sleep(0.5)
        time.sleep(max(0.0, GAP_S - (time.time() - view.started_ms / 1000)))
        for key in completed:
            client.start(OrderPlaced(**good_order(key)), wait=False)
        for key in compensated:
            client.start(OrderPlaced(**{**good_order(key), "card_token": "tok_decline"}))
        wait_outcomes(ns, {*completed, *compensated})

        listing = client.list_sagas(["completed"])
        assert sorted(s.key for s in listing.sagas) == completed
        started = [s.started_ms for s in listing.sagas]
        assert started == sorted(started) and listing.matched == 3 and listing.scanned >= 6
        running = client.list_sagas(["running", "compensating"])
        assert [(s.saga, s.key, s.status) for s in running.sagas] == [
            ("loan", "list-loan", "running")
        ]

    rows = saga_list(ns, "--status", "compensated")
    assert sorted(keys(rows)) == sorted(compensated)
    for row in rows:
        assert row[:3] == ["order", row[1], "compensated"]
        assert " ".join(row[7:]) == "payment: card declined"
    assert keys(saga_list(ns, "--status", "running")) == ["list-loan"]
    assert keys(saga_list(ns, "--saga", "loan")) == ["list-loan"]
    everything = saga_list(ns)
    assert len(everything) == 6 and keys(everything)[0] == "list-loan"  # oldest first
    assert keys(saga_list(ns, "--limit", "2")) == keys(everything)[:2]

    def between() -> str:
        """Older than the orders, younger than the loan: an age 1 s short of the loan's, taken
        anew for each listing, so a listing may start up to GAP_S - 1 s late (a loaded machine)."""
        return f"{int(time.time() * 1000 - view.started_ms - 1000)}ms"

    assert keys(saga_list(ns, "--older-than", between())) == ["list-loan"]
    assert saga_list(ns, "--older-than", "1h") == []
    assert keys(saga_list(ns, "--status", "completed", "--older-than", between())) == []

    done = subprocess.run(
        [sys.executable, "-m", "sagastream.ops.cli", "saga", "list", "--json", "--saga", "order"],
        env={**os.environ, **settings_env(ns.settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    as_json = json.loads(done.stdout)
    assert as_json["matched"] == 5 and {s["status"] for s in as_json["sagas"]} == {
        "completed",
        "compensated",
    }
