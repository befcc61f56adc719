"""The loan saga end to end: parallel checks, a human review that times out and escalates, then a
decision delivered by `sagastream signal` (or HTTP), then disbursement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from sagastream.ops.demo import settings_env
from sagastream.ops.signals import ApiAuth, serve
from tests.integration.helpers import API_HEADERS, API_TOKEN, lifecycle, wait_outcomes

pytestmark = pytest.mark.integration

LOAN_HANDLERS = "credit,documents,disbursement,notification"


@pytest.fixture
def topology_patch():
    def patch(data):
        data["sagas"]["loan"]["steps"]["review"]["timeout_ms"] = 1500

    return patch


@pytest.fixture
def loan_workers(start_workers):
    return start_workers("orchestrator", LOAN_HANDLERS)


def apply(ns, loan_id, customer="cust-1"):
    fields = {
        "loan_id": loan_id,
        "customer_id": customer,
        "email": "applicant@example.com",
        "amount_cents": 2_500_000,
        "term_months": 36,
        "iban": "DE89370400440532013000",
    }
    ns.client.publish("LoanApplied", loan_id, fields)
    ns.client.flush()


def test_review_times_out_escalates_then_a_cli_approval_pays_out(ns, loan_workers):
    apply(ns, "loan-1")
    escalations = ns.client.read(
        [ns.topic("sagas.escalations")], lambda m: any(x.key == b"loan-1" for x in m), timeout=40
    )
    escalated = next(m for m in escalations if m.key == b"loan-1").record
    assert escalated["step"] == "review" and escalated["waited_ms"] == 1500

    env = {**os.environ, **settings_env(ns.settings)}
    cli = [sys.executable, "-m", "sagastream.ops.cli", "signal", "loan", "loan-1", "review"]
    done = subprocess.run(
        [*cli, "--outcome", "approved", "--by", "ann"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    outcome = wait_outcomes(ns, {"loan-1"}, topic="sagas.outcomes")["loan-1"]
    assert outcome.event_type == "SagaCompleted"
    assert outcome.record["saga_type"] == "loan"
    assert outcome.record["completed_steps"][-2:] == ["review", "disbursement"]

    trail = lifecycle(ns, "loan-1", until="completed")
    whats = [what for what, _ in trail]
    assert whats[0] == "started"
    assert ("step_escalated", "review") in trail
    assert whats.index("step_escalated") < trail.index(("step_succeeded", "review"))
    assert trail.index(("step_succeeded", "review")) < trail.index(("step_started", "disbursement"))
    assert whats[-1] == "completed"

    bad = subprocess.run(
        [*cli[:-1], "disbursement", "--outcome", "approved"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "no human step 'disbursement'" in bad.stderr


def test_review_rejected_over_http_ends_the_loan_compensated(ns, loan_workers):
    apply(ns, "loan-2")
    lifecycle(ns, "loan-2", until="step_started", timeout=30)
    server = serve(ns.client, "127.0.0.1", 0, ApiAuth({"bob": API_TOKEN}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/sagas/loan/loan-2/steps"
    try:

        def post(path, body):
            request = urllib.request.Request(
                base + path, json.dumps(body).encode(), API_HEADERS, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        assert post("/review/signal", {"outcome": "maybe"})[0] == 400
        # the review waits for both checks; signal once it is waiting
        lifecycle(ns, "loan-2", until="step_escalated", timeout=30)
        status, body = post(
            "/review/signal", {"outcome": "rejected", "note": "income unclear", "decided_by": "bob"}
        )
        assert status == 202 and body["event_id"]
    finally:
        server.shutdown()
    outcome = wait_outcomes(ns, {"loan-2"}, topic="sagas.outcomes")["loan-2"]
    assert outcome.event_type == "SagaCompensated"
    assert outcome.record["failed_step"] == "review"
    assert "rejected by bob: income unclear" in outcome.record["reason"]
